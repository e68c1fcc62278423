// SPDX-License-Identifier: GPL-2.0
/*
 * mock-accel: functions (PFs and VFs) on the bus, the driver's probe and
 * remove, and SR-IOV.
 *
 * Locking: a PF's lock is taken before its VFs' locks. Probe and remove run
 * under the driver core's device lock; a PF's remove disables its VFs before
 * it gives up its class device, so a VF always finds its PF bound.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/err.h>
#include <linux/math64.h>
#include <linux/siphash.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/version.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>	/* moved from asm/ in 6.12 */
#else
#include <asm/unaligned.h>
#endif

#include "mock_accel.h"

/* ---- bus device attributes: the PCI identity ---- */

static ssize_t vendor_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "0x%04x\n", MOCK_ACCEL_VENDOR_ID);
}
static DEVICE_ATTR_RO(vendor);

static ssize_t device_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "0x%04x\n",
			  mock_accel_is_vf(to_mock_accel_fn(dev)) ?
			  MOCK_ACCEL_VF_DEVICE_ID : MOCK_ACCEL_PF_DEVICE_ID);
}
static DEVICE_ATTR_RO(device);

static ssize_t class_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "0x%06x\n", MOCK_ACCEL_PCI_CLASS);
}
static DEVICE_ATTR_RO(class);

static struct attribute *mock_accel_fn_attrs[] = {
	&dev_attr_vendor.attr,
	&dev_attr_device.attr,
	&dev_attr_class.attr,
	NULL,
};

static const struct attribute_group mock_accel_fn_group = {
	.attrs = mock_accel_fn_attrs,
};

const struct attribute_group *mock_accel_fn_groups[] = {
	&mock_accel_fn_group,
	NULL,
};

/* ---- creation ---- */

static void mock_accel_fn_release(struct device *dev)
{
	struct mock_accel_fn *fn = to_mock_accel_fn(dev);

	if (fn->pf)
		put_device(&fn->pf->dev);
	mutex_destroy(&fn->lock);
	kfree(fn->vfs);
	kfree(fn);
}

/* Stable for a given (seed, PF, VF): same device, same UUID, every load. */
static void mock_accel_fn_uuid(struct mock_accel_fn *fn)
{
	static const siphash_key_t key = {
		{ 0x6d6f636b2d616363ULL, 0x656c2d7575696421ULL }
	};
	u64 vf = fn->vf_index;

	put_unaligned_be64(siphash_3u64(mock_accel_uuid_seed, fn->pf_index, vf,
					&key), &fn->uuid.b[0]);
	put_unaligned_be64(siphash_3u64(mock_accel_uuid_seed, fn->pf_index,
					vf | BIT_ULL(32), &key), &fn->uuid.b[8]);
	fn->uuid.b[6] = (fn->uuid.b[6] & 0x0f) | 0x80;	/* version 8 (RFC 9562) */
	fn->uuid.b[8] = (fn->uuid.b[8] & 0x3f) | 0x80;	/* RFC variant */
}

/*
 * Creates a function and adds it to the bus, which probes it. A probe
 * failure leaves the function on the bus without a driver, as PCI does.
 */
struct mock_accel_fn *mock_accel_fn_create(u32 pf_index, u32 vf_index,
					   struct mock_accel_fn *pf,
					   u32 numa_node, u64 memory_size,
					   u32 total_vfs, const char *owner)
{
	struct mock_accel_fn *fn;
	u32 devfn;
	int err;

	fn = kzalloc(sizeof(*fn), GFP_KERNEL);
	if (!fn)
		return ERR_PTR(-ENOMEM);

	if (total_vfs) {
		fn->vfs = kcalloc(total_vfs, sizeof(*fn->vfs), GFP_KERNEL);
		if (!fn->vfs) {
			kfree(fn);
			return ERR_PTR(-ENOMEM);
		}
	}

	/* Two init sites, so lockdep sees PF and VF locks as two classes. */
	if (pf)
		mutex_init(&fn->lock);
	else
		mutex_init(&fn->lock);

	fn->pf_index = pf_index;
	fn->vf_index = vf_index;
	fn->numa_node = numa_node;
	fn->memory_size = memory_size;
	fn->total_vfs = total_vfs;
	/* Before device_add: the first uevent already names the owner. */
	if (owner)
		strscpy(fn->owner, owner, sizeof(fn->owner));
	fn->attach = mock_accel_fabric_attach_ms ? MOCK_ACCEL_ATTACH_DETACHED :
						   MOCK_ACCEL_ATTACH_LOCAL;
	INIT_DELAYED_WORK(&fn->attach_work, mock_accel_attach_work);
	mock_accel_fn_uuid(fn);

	device_initialize(&fn->dev);
	fn->dev.bus = &mock_accel_bus;
	fn->dev.parent = mock_accel_root;
	fn->dev.release = mock_accel_fn_release;
	if (pf)
		fn->pf = to_mock_accel_fn(get_device(&pf->dev));
	set_dev_node(&fn->dev, node_online(numa_node) ? numa_node : NUMA_NO_NODE);

	devfn = pf ? 1 + vf_index : 0;
	err = dev_set_name(&fn->dev, "0000:%02x:%02x.%u",
			   MOCK_ACCEL_PCI_BUS_BASE + pf_index, devfn >> 3,
			   devfn & 7);
	if (err)
		goto err_put;

	err = device_add(&fn->dev);
	if (err)
		goto err_put;

	return fn;

err_put:
	put_device(&fn->dev);
	return ERR_PTR(err);
}

/* ---- the driver ---- */

int mock_accel_bus_match(struct device *dev, MOCK_ACCEL_DRIVER *drv)
{
	return 1;	/* one driver for every function */
}

int mock_accel_bus_uevent(MOCK_ACCEL_BUS_DEV *dev, struct kobj_uevent_env *env)
{
	const struct mock_accel_fn *fn = to_mock_accel_fn(dev);
	int err;

	err = add_uevent_var(env, "MOCK_ACCEL_TYPE=%s",
			     mock_accel_is_vf(fn) ? "vf" : "pf");
	if (!err)
		err = add_uevent_var(env, "MOCK_ACCEL_PF_INDEX=%u", fn->pf_index);
	if (!err && mock_accel_is_vf(fn))
		err = add_uevent_var(env, "MOCK_ACCEL_VF_INDEX=%u", fn->vf_index);
	return err;
}

/*
 * Stable attach point (ABI.md): probe of PF @pf_index (@vf_index is
 * MOCK_ACCEL_VF_NONE) or of its VF @vf_index. Returns 0 or -errno.
 */
noinline int mock_accel_probe_device(u32 pf_index, u32 vf_index,
				     struct mock_accel_fn *fn)
{
	struct mock_accel_chr *chr;
	int err;

	err = mock_accel_probe_fault();
	if (err) {
		dev_warn(&fn->dev, "probe failed by fault injection: %d\n", err);
		return err;
	}

	chr = mock_accel_chr_create(fn);
	if (IS_ERR(chr))
		return PTR_ERR(chr);

	/*
	 * Published and announced under the lock: a status or health write
	 * that sees fn->chr sends its change uevent after the add, never
	 * while uevents are still held back.
	 */
	mutex_lock(&fn->lock);
	fn->status = 0;
	fn->chr = chr;
	mock_accel_chr_announce(chr);
	mutex_unlock(&fn->lock);
	return 0;
}

/* Stable attach point (ABI.md): remove of a function, same arguments. */
noinline void mock_accel_remove_device(u32 pf_index, u32 vf_index,
				       struct mock_accel_fn *fn)
{
	struct mock_accel_chr *chr;

	mutex_lock(&fn->lock);
	if (!mock_accel_is_vf(fn))
		mock_accel_sriov_disable(fn);
	chr = fn->chr;
	fn->chr = NULL;
	fn->status = 0;
	/* An unbound function is off the fabric; a later bind attaches anew. */
	if (fn->attach != MOCK_ACCEL_ATTACH_LOCAL)
		fn->attach = MOCK_ACCEL_ATTACH_DETACHED;
	mutex_unlock(&fn->lock);

	/*
	 * No attach can be queued any more (attach_store needs fn->chr), and
	 * the work takes fn->lock: cancelled here, outside it, before the
	 * function can be freed.
	 */
	cancel_delayed_work_sync(&fn->attach_work);
	mock_accel_chr_destroy(chr);
}

int mock_accel_bus_probe(struct device *dev)
{
	struct mock_accel_fn *fn = to_mock_accel_fn(dev);

	return mock_accel_probe_device(fn->pf_index, fn->vf_index, fn);
}

void mock_accel_bus_remove(struct device *dev)
{
	struct mock_accel_fn *fn = to_mock_accel_fn(dev);

	mock_accel_remove_device(fn->pf_index, fn->vf_index, fn);
}

/* ---- SR-IOV ---- */

/* Removes every VF, newest first, in use or not. Caller holds pf->lock. */
void mock_accel_sriov_disable(struct mock_accel_fn *pf)
{
	struct mock_accel_fn *vf;

	while (pf->num_vfs) {
		vf = pf->vfs[--pf->num_vfs];
		pf->vfs[pf->num_vfs] = NULL;
		device_unregister(&vf->dev);
	}
}

/*
 * Marks every VF as retiring, so no status write can allocate one any
 * more, unless one is allocated already: then clears the marks and returns
 * false. Caller holds pf->lock.
 */
static bool mock_accel_vfs_retire(struct mock_accel_fn *pf)
{
	struct mock_accel_fn *vf;
	bool busy = false;
	u32 i, n;

	for (n = 0; n < pf->num_vfs && !busy; n++) {
		vf = pf->vfs[n];
		mutex_lock(&vf->lock);
		busy = vf->status != 0;
		vf->retiring = !busy;
		mutex_unlock(&vf->lock);
	}
	for (i = 0; busy && i < n; i++) {
		vf = pf->vfs[i];
		mutex_lock(&vf->lock);
		vf->retiring = false;
		mutex_unlock(&vf->lock);
	}
	return !busy;
}

/* Caller holds pf->lock; pf has no VFs. Each VF gets an equal memory share. */
static int mock_accel_sriov_enable(struct mock_accel_fn *pf, u32 num_vfs)
{
	struct mock_accel_fn *vf;
	u64 share;
	u32 i;

	share = div_u64(pf->memory_size, num_vfs);
	if (share >= SZ_1M)
		share = round_down(share, SZ_1M);

	for (i = 0; i < num_vfs; i++) {
		vf = mock_accel_fn_create(pf->pf_index, i, pf, pf->numa_node,
					  share, 0, NULL);
		if (IS_ERR(vf)) {
			mock_accel_sriov_disable(pf);
			return PTR_ERR(vf);
		}
		pf->vfs[i] = vf;
		pf->num_vfs = i + 1;
	}
	return 0;
}

/*
 * sriov_numvfs with the PCI core's rules: the same count is a no-op, going
 * from one non-zero count to another needs 0 first (-EBUSY), above
 * sriov_totalvfs is -ERANGE. Disabling refuses while a VF is allocated.
 */
int mock_accel_sriov_configure(struct mock_accel_fn *pf, u32 num_vfs)
{
	int err = 0;

	if (num_vfs > pf->total_vfs)
		return -ERANGE;

	mutex_lock(&pf->lock);
	if (!pf->chr) {
		err = -ENODEV;
		goto out;
	}
	if (num_vfs == pf->num_vfs)
		goto out;

	if (!num_vfs) {
		if (!mock_accel_vfs_retire(pf)) {
			err = -EBUSY;
			goto out;
		}
		mock_accel_sriov_disable(pf);
	} else if (pf->num_vfs) {
		err = -EBUSY;
		goto out;
	} else {
		err = mock_accel_sriov_enable(pf, num_vfs);
		if (err)
			goto out;
	}
	mock_accel_notify(pf, "sriov", "MOCK_ACCEL_NUMVFS=%u", pf->num_vfs);
out:
	mutex_unlock(&pf->lock);
	return err;
}
