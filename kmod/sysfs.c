// SPDX-License-Identifier: GPL-2.0
/*
 * mock-accel: attributes of the class devices (ABI.md) and the change
 * uevents that state changes send.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/ctype.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/string.h>
#include <linux/sysfs.h>

#include "mock_accel.h"

static const char * const mock_accel_health_names[] = {
	[MOCK_ACCEL_HEALTH_OK] = "ok",
	[MOCK_ACCEL_HEALTH_DEGRADED] = "degraded",
	[MOCK_ACCEL_HEALTH_FAILED] = "failed",
};

const char *mock_accel_health_name(enum mock_accel_health health)
{
	return mock_accel_health_names[health];
}

static const char * const mock_accel_attach_names[] = {
	[MOCK_ACCEL_ATTACH_LOCAL] = "local",
	[MOCK_ACCEL_ATTACH_DETACHED] = "detached",
	[MOCK_ACCEL_ATTACH_ATTACHING] = "attaching",
	[MOCK_ACCEL_ATTACH_ATTACHED] = "attached",
	[MOCK_ACCEL_ATTACH_FAILED] = "failed",
};

/*
 * Sends a change uevent on the function's class device with
 * MOCK_ACCEL_EVENT=@event and one more KEY=VALUE. Caller holds fn->lock and
 * fn->chr is set.
 */
void mock_accel_notify(struct mock_accel_fn *fn, const char *event,
		       const char *fmt, ...)
{
	char ev[32], kv[32 + MOCK_ACCEL_OWNER_LEN];
	char *envp[] = { ev, kv, NULL };
	va_list args;

	snprintf(ev, sizeof(ev), "MOCK_ACCEL_EVENT=%s", event);
	va_start(args, fmt);
	vsnprintf(kv, sizeof(kv), fmt, args);
	va_end(args);
	kobject_uevent_env(&fn->chr->dev.kobj, KOBJ_CHANGE, envp);
}

static struct mock_accel_fn *attr_fn(struct device *dev)
{
	return to_mock_accel_chr(dev)->fn;
}

/* ---- identity (read-only, fixed for the function's life) ---- */

static ssize_t uuid_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	return sysfs_emit(buf, "%pUb\n", &attr_fn(dev)->uuid);
}
static DEVICE_ATTR_RO(uuid);

static ssize_t type_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	return sysfs_emit(buf, "%s\n", mock_accel_is_vf(attr_fn(dev)) ? "vf" : "pf");
}
static DEVICE_ATTR_RO(type);

static ssize_t memory_size_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", attr_fn(dev)->memory_size);
}
static DEVICE_ATTR_RO(memory_size);

static ssize_t capabilities_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n", mock_accel_is_vf(attr_fn(dev)) ?
			  "compute,dma" : "compute,dma,sriov");
}
static DEVICE_ATTR_RO(capabilities);

static ssize_t numa_node_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", attr_fn(dev)->numa_node);
}
static DEVICE_ATTR_RO(numa_node);

static ssize_t fw_version_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n", MOCK_ACCEL_FW_VERSION);
}
static DEVICE_ATTR_RO(fw_version);

/* ---- state ---- */

static ssize_t status_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	u32 status;

	mutex_lock(&fn->lock);
	status = fn->status;
	mutex_unlock(&fn->lock);
	return sysfs_emit(buf, "%u\n", status);
}

/* 0 frees, 1 allocates; a failed function cannot be allocated (-EIO). */
static ssize_t status_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	u32 status;
	int err;

	err = kstrtou32(buf, 0, &status);
	if (err)
		return err;
	if (status > 1)
		return -ERANGE;

	mutex_lock(&fn->lock);
	if (!fn->chr || fn->retiring)
		err = -ENODEV;
	else if (status && fn->health == MOCK_ACCEL_HEALTH_FAILED)
		err = -EIO;
	else if (status && fn->attach != MOCK_ACCEL_ATTACH_LOCAL &&
		 fn->attach != MOCK_ACCEL_ATTACH_ATTACHED)
		err = -ENOLINK;
	else if (status != fn->status) {
		fn->status = status;
		mock_accel_notify(fn, "status", "MOCK_ACCEL_STATUS=%u", status);
	}
	mutex_unlock(&fn->lock);

	return err ? err : count;
}
static DEVICE_ATTR_RW(status);

static ssize_t health_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	enum mock_accel_health health;

	mutex_lock(&fn->lock);
	health = fn->health;
	mutex_unlock(&fn->lock);
	return sysfs_emit(buf, "%s\n", mock_accel_health_name(health));
}

/* Fault injection: "ok", "degraded" or "failed"; a change sends a uevent. */
static ssize_t health_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	int health, err = 0;

	health = sysfs_match_string(mock_accel_health_names, buf);
	if (health < 0)
		return health;

	mutex_lock(&fn->lock);
	if (!fn->chr || fn->retiring) {
		err = -ENODEV;
	} else if (health != fn->health) {
		fn->health = health;
		mock_accel_notify(fn, "health", "MOCK_ACCEL_HEALTH=%s",
				  mock_accel_health_name(health));
	}
	mutex_unlock(&fn->lock);

	return err ? err : count;
}
static DEVICE_ATTR_RW(health);

/* ---- fabric attach (fabric_attach_ms > 0) ---- */

/* Caller holds fn->lock. */
static void mock_accel_attach_set(struct mock_accel_fn *fn,
				  enum mock_accel_attach state)
{
	if (state == fn->attach)
		return;
	fn->attach = state;
	if (fn->chr)
		mock_accel_notify(fn, "attach", "MOCK_ACCEL_ATTACH=%s",
				  mock_accel_attach_names[state]);
}

/* Ends an attach: attached, or failed (injected, or the function failed). */
void mock_accel_attach_work(struct work_struct *work)
{
	struct mock_accel_fn *fn = container_of(to_delayed_work(work),
						struct mock_accel_fn,
						attach_work);

	mutex_lock(&fn->lock);
	if (fn->attach == MOCK_ACCEL_ATTACH_ATTACHING) {
		if (fn->fail_attach || fn->health == MOCK_ACCEL_HEALTH_FAILED) {
			if (fn->fail_attach)
				fn->fail_attach--;
			mock_accel_attach_set(fn, MOCK_ACCEL_ATTACH_FAILED);
		} else {
			mock_accel_attach_set(fn, MOCK_ACCEL_ATTACH_ATTACHED);
		}
	}
	mutex_unlock(&fn->lock);
}

static ssize_t attach_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	enum mock_accel_attach state;

	mutex_lock(&fn->lock);
	state = fn->attach;
	mutex_unlock(&fn->lock);
	return sysfs_emit(buf, "%s\n", mock_accel_attach_names[state]);
}

/*
 * "attach" starts an attach (a no-op while attaching or attached; again
 * after a failure); "detach" ends one or undoes it, refused while the
 * function is allocated.
 */
static ssize_t attach_store(struct device *dev, struct device_attribute *attr,
			    const char *buf, size_t count)
{
	static const char * const ops[] = { "attach", "detach" };
	struct mock_accel_fn *fn = attr_fn(dev);
	int op, err = 0;

	op = sysfs_match_string(ops, buf);
	if (op < 0)
		return op;

	mutex_lock(&fn->lock);
	if (!fn->chr || fn->retiring) {
		err = -ENODEV;
	} else if (fn->attach == MOCK_ACCEL_ATTACH_LOCAL) {
		err = -EOPNOTSUPP;
	} else if (op == 0) {
		if (fn->attach == MOCK_ACCEL_ATTACH_DETACHED ||
		    fn->attach == MOCK_ACCEL_ATTACH_FAILED) {
			mock_accel_attach_set(fn, MOCK_ACCEL_ATTACH_ATTACHING);
			mod_delayed_work(system_wq, &fn->attach_work,
				msecs_to_jiffies(mock_accel_fabric_attach_ms));
		}
	} else if (fn->status) {
		err = -EBUSY;
	} else {
		/* A pending attach finds the state changed and does nothing. */
		mock_accel_attach_set(fn, MOCK_ACCEL_ATTACH_DETACHED);
	}
	mutex_unlock(&fn->lock);

	return err ? err : count;
}

static ssize_t fail_attach_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	u32 n;

	mutex_lock(&fn->lock);
	n = fn->fail_attach;
	mutex_unlock(&fn->lock);
	return sysfs_emit(buf, "%u\n", n);
}

/* Fault injection: the next N attaches of this function fail. */
static ssize_t fail_attach_store(struct device *dev,
				 struct device_attribute *attr,
				 const char *buf, size_t count)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	u32 n;
	int err;

	err = kstrtou32(buf, 0, &n);
	if (err)
		return err;
	if (n > MOCK_ACCEL_MAX_FAIL_ATTACH)
		return -ERANGE;

	mutex_lock(&fn->lock);
	if (!fn->chr || fn->retiring)
		err = -ENODEV;
	else if (fn->attach == MOCK_ACCEL_ATTACH_LOCAL)
		err = -EOPNOTSUPP;
	else
		fn->fail_attach = n;
	mutex_unlock(&fn->lock);

	return err ? err : count;
}

/* ---- the owner: which node a PF and its VFs belong to (shared kernels) ---- */

DEFINE_SPINLOCK(mock_accel_owner_lock);

/*
 * Copies the owner of @fn ("" if none; a VF's is its PF's) into @owner,
 * MOCK_ACCEL_OWNER_LEN bytes. The spinlock, not fn->lock: a PF drains its
 * VFs' attributes under its own lock, so a VF's reader must not take it.
 */
void mock_accel_owner_get(const struct mock_accel_fn *fn, char *owner)
{
	const struct mock_accel_fn *pf = mock_accel_is_vf(fn) ? fn->pf : fn;

	spin_lock(&mock_accel_owner_lock);
	strscpy(owner, pf->owner, MOCK_ACCEL_OWNER_LEN);
	spin_unlock(&mock_accel_owner_lock);
}

/*
 * Reads a node name from @len bytes of @buf (one trailing newline allowed)
 * into @owner: a Kubernetes node name, i.e. an RFC 1123 subdomain: 1..253
 * characters, dot-separated labels of [a-z0-9-] that start and end with a
 * letter or digit. Returns 0 or -EINVAL.
 */
int mock_accel_owner_parse(const char *buf, size_t len, char *owner)
{
	size_t i;

	if (len && buf[len - 1] == '\n')
		len--;
	if (!len || len >= MOCK_ACCEL_OWNER_LEN)
		return -EINVAL;
	for (i = 0; i < len; i++) {
		char c = buf[i];
		bool edge = i == 0 || i == len - 1 || buf[i - 1] == '.' ||
			    buf[i + 1] == '.';

		if (isdigit(c) || (c >= 'a' && c <= 'z'))
			continue;
		if ((c == '-' || c == '.') && !edge)
			continue;
		return -EINVAL;
	}
	memcpy(owner, buf, len);
	owner[len] = '\0';
	return 0;
}

static ssize_t owner_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	char owner[MOCK_ACCEL_OWNER_LEN];

	mock_accel_owner_get(attr_fn(dev), owner);
	return sysfs_emit(buf, "%s\n", owner);
}

/*
 * PF only, compare-and-set: "NAME" takes an unowned PF (a no-op if NAME
 * owns it already, -EBUSY if another node does); "-NAME" gives it back (a
 * no-op if unowned, -EBUSY if another node owns it). Two writers racing
 * for one unowned PF: exactly one wins. A change sends a change uevent
 * with the previous owner; every class uevent names the current one.
 */
static ssize_t owner_store(struct device *dev, struct device_attribute *attr,
			   const char *buf, size_t count)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	char name[MOCK_ACCEL_OWNER_LEN], prev[MOCK_ACCEL_OWNER_LEN];
	bool release = count && buf[0] == '-';
	bool changed = false;
	int err;

	err = mock_accel_owner_parse(buf + release, count - release, name);
	if (err)
		return err;

	mutex_lock(&fn->lock);
	if (!fn->chr) {
		err = -ENODEV;
		goto out;
	}
	spin_lock(&mock_accel_owner_lock);
	strscpy(prev, fn->owner, sizeof(prev));
	if (release) {
		if (!strcmp(fn->owner, name)) {
			fn->owner[0] = '\0';
			changed = true;
		} else if (fn->owner[0]) {
			err = -EBUSY;
		}
	} else if (!fn->owner[0]) {
		strscpy(fn->owner, name, sizeof(fn->owner));
		changed = true;
	} else if (strcmp(fn->owner, name)) {
		err = -EBUSY;
	}
	spin_unlock(&mock_accel_owner_lock);
	if (changed)
		mock_accel_notify(fn, "owner", "MOCK_ACCEL_PREVIOUS_OWNER=%s", prev);
out:
	mutex_unlock(&fn->lock);
	return err ? err : count;
}
static DEVICE_ATTR_RW(owner);

/* ---- SR-IOV (PFs only), PCI-core names and meanings ---- */

static ssize_t sriov_totalvfs_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", attr_fn(dev)->total_vfs);
}
static DEVICE_ATTR_RO(sriov_totalvfs);

static ssize_t sriov_numvfs_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	struct mock_accel_fn *fn = attr_fn(dev);
	u32 num_vfs;

	mutex_lock(&fn->lock);
	num_vfs = fn->num_vfs;
	mutex_unlock(&fn->lock);
	return sysfs_emit(buf, "%u\n", num_vfs);
}

static ssize_t sriov_numvfs_store(struct device *dev,
				  struct device_attribute *attr,
				  const char *buf, size_t count)
{
	u32 num_vfs;
	int err;

	err = kstrtou32(buf, 0, &num_vfs);
	if (err)
		return err;

	err = mock_accel_sriov_configure(attr_fn(dev), num_vfs);
	return err ? err : count;
}
static DEVICE_ATTR_RW(sriov_numvfs);

/*
 * A VF's status and health are attributes of their own, not the PF's:
 * kernfs gives each struct attribute its own lockdep class, and a PF drains
 * its VFs' attributes under its lock (sriov_numvfs=0) while a PF's own
 * status write takes that lock: one class for both read as a circular
 * dependency and switched lockdep off.
 */
static struct device_attribute dev_attr_vf_status =
	__ATTR(status, 0644, status_show, status_store);
static struct device_attribute dev_attr_vf_health =
	__ATTR(health, 0644, health_show, health_store);
static struct device_attribute dev_attr_pf_attach =
	__ATTR(attach, 0644, attach_show, attach_store);
static struct device_attribute dev_attr_vf_attach =
	__ATTR(attach, 0644, attach_show, attach_store);
static struct device_attribute dev_attr_pf_fail_attach =
	__ATTR(fail_attach, 0644, fail_attach_show, fail_attach_store);
static struct device_attribute dev_attr_vf_fail_attach =
	__ATTR(fail_attach, 0644, fail_attach_show, fail_attach_store);
static struct device_attribute dev_attr_vf_owner =
	__ATTR(owner, 0444, owner_show, NULL);

#define MOCK_ACCEL_IDENTITY_ATTRS			\
	&dev_attr_uuid.attr,				\
	&dev_attr_type.attr,				\
	&dev_attr_memory_size.attr,			\
	&dev_attr_capabilities.attr,			\
	&dev_attr_numa_node.attr,			\
	&dev_attr_fw_version.attr

static struct attribute *mock_accel_pf_common_attrs[] = {
	MOCK_ACCEL_IDENTITY_ATTRS,
	&dev_attr_status.attr,
	&dev_attr_health.attr,
	&dev_attr_pf_attach.attr,
	&dev_attr_pf_fail_attach.attr,
	&dev_attr_owner.attr,
	NULL,
};

static const struct attribute_group mock_accel_pf_common_group = {
	.attrs = mock_accel_pf_common_attrs,
};

static struct attribute *mock_accel_vf_common_attrs[] = {
	MOCK_ACCEL_IDENTITY_ATTRS,
	&dev_attr_vf_status.attr,
	&dev_attr_vf_health.attr,
	&dev_attr_vf_attach.attr,
	&dev_attr_vf_fail_attach.attr,
	&dev_attr_vf_owner.attr,
	NULL,
};

static const struct attribute_group mock_accel_vf_common_group = {
	.attrs = mock_accel_vf_common_attrs,
};

static struct attribute *mock_accel_sriov_attrs[] = {
	&dev_attr_sriov_totalvfs.attr,
	&dev_attr_sriov_numvfs.attr,
	NULL,
};

static const struct attribute_group mock_accel_sriov_group = {
	.attrs = mock_accel_sriov_attrs,
};

const struct attribute_group *mock_accel_pf_groups[] = {
	&mock_accel_pf_common_group,
	&mock_accel_sriov_group,
	NULL,
};

const struct attribute_group *mock_accel_vf_groups[] = {
	&mock_accel_vf_common_group,
	NULL,
};
