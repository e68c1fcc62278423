/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mock-accel: mock PCIe accelerators for testing Kubernetes DRA stacks.
 *
 * One bus ("mock-accel"), one driver, and per bound function a class
 * device (/sys/class/mock-accel/mockN, mockN_vfM) with a character device
 * (/dev/mock-accel/...). The user-space contract is kmod/ABI.md.
 */
#ifndef _MOCK_ACCEL_H
#define _MOCK_ACCEL_H

#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/uuid.h>
#include <linux/version.h>
#include <linux/workqueue.h>

#define MOCK_ACCEL_NAME			"mock-accel"
#define MOCK_ACCEL_MAX_PFS		64	/* PF ids 0..63 */
#define MOCK_ACCEL_MAX_VFS		64	/* per PF, keeps VF functions on one bus */
#define MOCK_ACCEL_MAX_NUMA		8
#define MOCK_ACCEL_MAX_MEMORY_MIB	(1024U * 1024U)	/* 1 TiB per PF */
#define MOCK_ACCEL_MAX_MINORS		(MOCK_ACCEL_MAX_PFS * (1 + MOCK_ACCEL_MAX_VFS))

/* vf_index of a PF at the stable attach points (ABI.md) */
#define MOCK_ACCEL_VF_NONE		U32_MAX

/* Mock PCI identity: PF n sits at 0000:(BUS_BASE + n):00.0, VF m at devfn 1 + m */
#define MOCK_ACCEL_PCI_BUS_BASE		0x1a
#define MOCK_ACCEL_VENDOR_ID		0x1b36
#define MOCK_ACCEL_PF_DEVICE_ID		0x10f0
#define MOCK_ACCEL_VF_DEVICE_ID		0x10f1
#define MOCK_ACCEL_PCI_CLASS		0x120000	/* processing accelerator */
#define MOCK_ACCEL_FW_VERSION		"1.4.2"
#define MOCK_ACCEL_MAX_ATTACH_MS	60000	/* fabric_attach_ms limit */
#define MOCK_ACCEL_MAX_FAIL_ATTACH	1000	/* fail_attach limit */
/* A PF's owner: a node name (RFC 1123 subdomain), at most 253 characters. */
#define MOCK_ACCEL_OWNER_LEN		254

/* Kernels after 6.1 made these callbacks take const pointers. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
#define MOCK_ACCEL_CLASS_DEV		const struct device
#else
#define MOCK_ACCEL_CLASS_DEV		struct device
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define MOCK_ACCEL_BUS_DEV		const struct device
#else
#define MOCK_ACCEL_BUS_DEV		struct device
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
#define MOCK_ACCEL_DRIVER		const struct device_driver
#else
#define MOCK_ACCEL_DRIVER		struct device_driver
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define MOCK_ACCEL_BUS_TYPE		const struct bus_type
#define MOCK_ACCEL_CLASS		const struct class
#else
#define MOCK_ACCEL_BUS_TYPE		struct bus_type
#define MOCK_ACCEL_CLASS		struct class
#endif

enum mock_accel_health {
	MOCK_ACCEL_HEALTH_OK,
	MOCK_ACCEL_HEALTH_DEGRADED,
	MOCK_ACCEL_HEALTH_FAILED,
};

/*
 * A fabric-attached function (fabric_attach_ms > 0) must be attached
 * before it can be allocated; an attach takes fabric_attach_ms and may fail.
 */
enum mock_accel_attach {
	MOCK_ACCEL_ATTACH_LOCAL,	/* not fabric-attached: always usable */
	MOCK_ACCEL_ATTACH_DETACHED,
	MOCK_ACCEL_ATTACH_ATTACHING,
	MOCK_ACCEL_ATTACH_ATTACHED,
	MOCK_ACCEL_ATTACH_FAILED,
};

struct mock_accel_chr;

/*
 * A function (PF or VF) on the mock-accel bus. Its identity is fixed at
 * creation; @lock guards the state below it.
 */
struct mock_accel_fn {
	struct device dev;		/* bus device, named by its PCI address */
	u32 pf_index;
	u32 vf_index;			/* MOCK_ACCEL_VF_NONE for a PF */
	u32 numa_node;
	u64 memory_size;		/* bytes */
	uuid_t uuid;
	struct mock_accel_fn *pf;	/* VF: its PF, reference held */

	struct mutex lock;
	struct mock_accel_chr *chr;	/* set while a driver is bound */
	bool retiring;			/* VF: its PF is removing it */
	u32 status;			/* 0 free, 1 allocated */
	enum mock_accel_health health;
	enum mock_accel_attach attach;
	u32 fail_attach;		/* the next N attaches fail */
	struct delayed_work attach_work; /* ends an attach */

	/* PF only */
	char owner[MOCK_ACCEL_OWNER_LEN]; /* "" or the node owning it and its VFs,
					   * under mock_accel_owner_lock */
	u32 total_vfs;
	u32 num_vfs;
	struct mock_accel_fn **vfs;	/* total_vfs entries */
};

/* What the driver creates for a bound function: class device + chrdev. */
struct mock_accel_chr {
	struct device dev;		/* mockN / mockN_vfM, with a devt */
	struct cdev cdev;
	struct mock_accel_fn *fn;	/* reference held until release */
};

static inline bool mock_accel_is_vf(const struct mock_accel_fn *fn)
{
	return fn->vf_index != MOCK_ACCEL_VF_NONE;
}

static inline struct mock_accel_fn *to_mock_accel_fn(MOCK_ACCEL_BUS_DEV *dev)
{
	return container_of(dev, struct mock_accel_fn, dev);
}

static inline struct mock_accel_chr *to_mock_accel_chr(MOCK_ACCEL_CLASS_DEV *dev)
{
	return container_of(dev, struct mock_accel_chr, dev);
}

/* main.c */
extern MOCK_ACCEL_BUS_TYPE mock_accel_bus;
extern MOCK_ACCEL_CLASS mock_accel_class;
extern struct device *mock_accel_root;
extern unsigned int mock_accel_max_vfs;
extern u64 mock_accel_uuid_seed;
extern unsigned int mock_accel_fabric_attach_ms;
int mock_accel_probe_fault(void);

/* fn.c: functions on the bus */
struct mock_accel_fn *mock_accel_fn_create(u32 pf_index, u32 vf_index,
					   struct mock_accel_fn *pf,
					   u32 numa_node, u64 memory_size,
					   u32 total_vfs, const char *owner);
int mock_accel_bus_match(struct device *dev, MOCK_ACCEL_DRIVER *drv);
int mock_accel_bus_uevent(MOCK_ACCEL_BUS_DEV *dev, struct kobj_uevent_env *env);
int mock_accel_bus_probe(struct device *dev);
void mock_accel_bus_remove(struct device *dev);
int mock_accel_sriov_configure(struct mock_accel_fn *pf, u32 num_vfs);
void mock_accel_sriov_disable(struct mock_accel_fn *pf);
extern const struct attribute_group *mock_accel_fn_groups[];

/*
 * Stable attach points for kprobes (ABI.md): every probe and remove of a
 * function goes through these, with plain integers first.
 */
int mock_accel_probe_device(u32 pf_index, u32 vf_index,
			    struct mock_accel_fn *fn);
void mock_accel_remove_device(u32 pf_index, u32 vf_index,
			      struct mock_accel_fn *fn);

/* chr.c: class device and character device of a bound function */
int mock_accel_chr_region_init(void);
void mock_accel_chr_region_exit(void);
struct mock_accel_chr *mock_accel_chr_create(struct mock_accel_fn *fn);
void mock_accel_chr_announce(struct mock_accel_chr *chr);
void mock_accel_chr_destroy(struct mock_accel_chr *chr);
int mock_accel_class_uevent(MOCK_ACCEL_CLASS_DEV *dev,
			    struct kobj_uevent_env *env);
char *mock_accel_class_devnode(MOCK_ACCEL_CLASS_DEV *dev, umode_t *mode);

/* sysfs.c: attributes of the class devices */
extern const struct attribute_group *mock_accel_pf_groups[];
extern const struct attribute_group *mock_accel_vf_groups[];
__printf(3, 4)
void mock_accel_notify(struct mock_accel_fn *fn, const char *event,
		       const char *fmt, ...);
const char *mock_accel_health_name(enum mock_accel_health health);
extern spinlock_t mock_accel_owner_lock;
void mock_accel_owner_get(const struct mock_accel_fn *fn, char *owner);
int mock_accel_owner_parse(const char *buf, size_t len, char *owner);
void mock_accel_attach_work(struct work_struct *work);

#endif /* _MOCK_ACCEL_H */
