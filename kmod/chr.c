// SPDX-License-Identifier: GPL-2.0
/*
 * mock-accel: what the driver creates for a bound function: the class
 * device (/sys/class/mock-accel/mockN, mockN_vfM) and its character device
 * (/dev/mock-accel/...), whose read returns the function's identity.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/err.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "mock_accel.h"

static dev_t mock_accel_devt;
static DEFINE_IDA(mock_accel_minors);

MOCK_ACCEL_CLASS mock_accel_class = {
	.name = MOCK_ACCEL_NAME,
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 4, 0)
	.owner = THIS_MODULE,
#endif
	.dev_uevent = mock_accel_class_uevent,
	.devnode = mock_accel_class_devnode,
};

int mock_accel_chr_region_init(void)
{
	return alloc_chrdev_region(&mock_accel_devt, 0, MOCK_ACCEL_MAX_MINORS,
				   MOCK_ACCEL_NAME);
}

void mock_accel_chr_region_exit(void)
{
	unregister_chrdev_region(mock_accel_devt, MOCK_ACCEL_MAX_MINORS);
	ida_destroy(&mock_accel_minors);
}

/* ---- the character device ---- */

static int mock_accel_chr_open(struct inode *inode, struct file *file)
{
	file->private_data = container_of(inode->i_cdev, struct mock_accel_chr,
					  cdev);
	return 0;
}

/* Identity as KEY=VALUE lines; -ENODEV once the function is gone. */
static ssize_t mock_accel_chr_read(struct file *file, char __user *ubuf,
				   size_t len, loff_t *ppos)
{
	struct mock_accel_chr *chr = file->private_data;
	struct mock_accel_fn *fn = chr->fn;
	char buf[320];
	bool live;
	int n;

	mutex_lock(&fn->lock);
	live = fn->chr == chr;
	mutex_unlock(&fn->lock);
	if (!live)
		return -ENODEV;

	n = scnprintf(buf, sizeof(buf),
		      "MOCK_ACCEL_DEVICE=%s\nMOCK_ACCEL_UUID=%pUb\nMOCK_ACCEL_PCI=%s\n"
		      "MOCK_ACCEL_TYPE=%s\nMOCK_ACCEL_NUMA_NODE=%u\n"
		      "MOCK_ACCEL_MEMORY_SIZE=%llu\n",
		      dev_name(&chr->dev), &fn->uuid, dev_name(&fn->dev),
		      mock_accel_is_vf(fn) ? "vf" : "pf", fn->numa_node,
		      fn->memory_size);
	return simple_read_from_buffer(ubuf, len, ppos, buf, n);
}

static const struct file_operations mock_accel_chr_fops = {
	.owner = THIS_MODULE,
	.open = mock_accel_chr_open,
	.read = mock_accel_chr_read,
	.llseek = default_llseek,
};

/* ---- the class device ---- */

int mock_accel_class_uevent(MOCK_ACCEL_CLASS_DEV *dev,
			    struct kobj_uevent_env *env)
{
	const struct mock_accel_fn *fn = to_mock_accel_chr(dev)->fn;
	bool vf = mock_accel_is_vf(fn);
	char owner[MOCK_ACCEL_OWNER_LEN];
	int err;

	err = add_uevent_var(env, "MOCK_ACCEL_TYPE=%s", vf ? "vf" : "pf");
	if (!err)
		err = add_uevent_var(env, "MOCK_ACCEL_UUID=%pUb", &fn->uuid);
	if (!err)
		err = add_uevent_var(env, "MOCK_ACCEL_PCI=%s", dev_name(&fn->dev));
	if (!err)
		err = add_uevent_var(env, "MOCK_ACCEL_NUMA_NODE=%u", fn->numa_node);
	if (!err)
		err = add_uevent_var(env, "MOCK_ACCEL_MEMORY_SIZE=%llu",
				     fn->memory_size);
	if (!err)
		err = add_uevent_var(env, "MOCK_ACCEL_PF_INDEX=%u", fn->pf_index);
	if (!err && vf)
		err = add_uevent_var(env, "MOCK_ACCEL_VF_INDEX=%u", fn->vf_index);
	if (!err && vf)
		err = add_uevent_var(env, "MOCK_ACCEL_PHYSFN=mock%u", fn->pf_index);
	mock_accel_owner_get(fn, owner);
	if (!err && owner[0])
		err = add_uevent_var(env, "MOCK_ACCEL_OWNER=%s", owner);
	return err;
}

char *mock_accel_class_devnode(MOCK_ACCEL_CLASS_DEV *dev, umode_t *mode)
{
	return kasprintf(GFP_KERNEL, MOCK_ACCEL_NAME "/%s", dev_name(dev));
}

static void mock_accel_chr_release(struct device *dev)
{
	struct mock_accel_chr *chr = to_mock_accel_chr(dev);

	ida_free(&mock_accel_minors, MINOR(dev->devt));
	put_device(&chr->fn->dev);
	kfree(chr);
}

static void mock_accel_virtfn_name(const struct mock_accel_fn *vf, char *buf,
				   size_t len)
{
	snprintf(buf, len, "virtfn%u", vf->vf_index);
}

/*
 * Registers the class device and its character device with the add uevent
 * held back: a VF's physfn/virtfn links must exist before listeners hear
 * of it. mock_accel_chr_announce() sends it.
 */
struct mock_accel_chr *mock_accel_chr_create(struct mock_accel_fn *fn)
{
	struct mock_accel_chr *chr, *pf_chr = NULL;
	char link[sizeof("virtfn") + 10];	/* "virtfn" and a u32 */
	int minor, err;

	chr = kzalloc(sizeof(*chr), GFP_KERNEL);
	if (!chr)
		return ERR_PTR(-ENOMEM);

	minor = ida_alloc_max(&mock_accel_minors, MOCK_ACCEL_MAX_MINORS - 1,
			      GFP_KERNEL);
	if (minor < 0) {
		kfree(chr);
		return ERR_PTR(minor);
	}

	device_initialize(&chr->dev);
	chr->dev.class = &mock_accel_class;
	chr->dev.parent = &fn->dev;
	chr->dev.devt = MKDEV(MAJOR(mock_accel_devt), minor);
	chr->dev.release = mock_accel_chr_release;
	chr->fn = to_mock_accel_fn(get_device(&fn->dev));

	if (mock_accel_is_vf(fn)) {
		/* The PF is bound while it has VFs: see fn.c. */
		pf_chr = fn->pf->chr;
		chr->dev.groups = mock_accel_vf_groups;
		err = dev_set_name(&chr->dev, "mock%u_vf%u", fn->pf_index,
				   fn->vf_index);
	} else {
		chr->dev.groups = mock_accel_pf_groups;
		err = dev_set_name(&chr->dev, "mock%u", fn->pf_index);
	}
	if (err)
		goto err_put;

	cdev_init(&chr->cdev, &mock_accel_chr_fops);
	chr->cdev.owner = THIS_MODULE;
	dev_set_uevent_suppress(&chr->dev, 1);
	err = cdev_device_add(&chr->cdev, &chr->dev);
	if (err)
		goto err_put;

	if (pf_chr) {
		err = sysfs_create_link(&chr->dev.kobj, &pf_chr->dev.kobj,
					"physfn");
		if (err)
			goto err_del;
		mock_accel_virtfn_name(fn, link, sizeof(link));
		err = sysfs_create_link(&pf_chr->dev.kobj, &chr->dev.kobj, link);
		if (err)
			goto err_del;
	}
	return chr;

err_del:
	cdev_device_del(&chr->cdev, &chr->dev);
err_put:
	put_device(&chr->dev);
	return ERR_PTR(err);
}

void mock_accel_chr_announce(struct mock_accel_chr *chr)
{
	dev_set_uevent_suppress(&chr->dev, 0);
	kobject_uevent(&chr->dev.kobj, KOBJ_ADD);
}

void mock_accel_chr_destroy(struct mock_accel_chr *chr)
{
	struct mock_accel_fn *fn = chr->fn;
	char link[sizeof("virtfn") + 10];	/* "virtfn" and a u32 */

	if (mock_accel_is_vf(fn)) {
		mock_accel_virtfn_name(fn, link, sizeof(link));
		sysfs_remove_link(&fn->pf->chr->dev.kobj, link);
	}
	cdev_device_del(&chr->cdev, &chr->dev);
	put_device(&chr->dev);
}
