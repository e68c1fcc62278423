// SPDX-License-Identifier: GPL-2.0
/*
 * mock-accel: module parameters, the PF table, the bus attributes that add
 * and delete PFs at run time (netdevsim's new_device/del_device), and
 * module init/exit.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/err.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/string.h>
#include <linux/utsname.h>
#include <linux/jhash.h>

#include "mock_accel.h"

static unsigned int num_pfs = 4;
module_param(num_pfs, uint, 0444);
MODULE_PARM_DESC(num_pfs, "Physical functions created at load (0-64, default 4)");

static unsigned int numa_nodes = 2;
module_param(numa_nodes, uint, 0444);
MODULE_PARM_DESC(numa_nodes, "NUMA nodes the PFs are spread over, PF n on node n % numa_nodes (1-8, default 2)");

unsigned int mock_accel_max_vfs = 8;
module_param_named(max_vfs, mock_accel_max_vfs, uint, 0444);
MODULE_PARM_DESC(max_vfs, "sriov_totalvfs of every PF (0-64, default 8)");

static unsigned int memory_mib = 16384;
module_param(memory_mib, uint, 0444);
MODULE_PARM_DESC(memory_mib, "Memory of every PF in MiB (1-1048576, default 16384)");

u64 mock_accel_uuid_seed;
module_param_named(uuid_seed, mock_accel_uuid_seed, ullong, 0444);
MODULE_PARM_DESC(uuid_seed, "Seed of the device UUIDs (default 0: derived from the host name)");

unsigned int mock_accel_fabric_attach_ms;
module_param_named(fabric_attach_ms, mock_accel_fabric_attach_ms, uint, 0444);
MODULE_PARM_DESC(fabric_attach_ms, "Fabric-attached functions: each needs an attach taking this long before use (0-60000 ms, default 0: local functions)");

static struct mock_accel_fn *mock_accel_pfs[MOCK_ACCEL_MAX_PFS];
static DEFINE_MUTEX(mock_accel_pfs_lock);	/* guards mock_accel_pfs[], _live */
/*
 * Whether new_device/del_device may act: from the end of init to the start
 * of exit. The bus attributes exist from bus_register() to bus_unregister(),
 * longer than the root device the PFs hang from.
 */
static bool mock_accel_live;
static atomic_t mock_accel_fail_probes = ATOMIC_INIT(0);
struct device *mock_accel_root;

/* Consumes one injected probe failure, if any is pending. */
int mock_accel_probe_fault(void)
{
	return atomic_add_unless(&mock_accel_fail_probes, -1, 0) ? -EIO : 0;
}

/* Must be called with mock_accel_pfs_lock held. */
static int mock_accel_pf_add(u32 id, u32 numa_node, const char *owner)
{
	struct mock_accel_fn *pf;

	if (mock_accel_pfs[id])
		return -EEXIST;

	pf = mock_accel_fn_create(id, MOCK_ACCEL_VF_NONE, NULL, numa_node,
				  (u64)memory_mib << 20, mock_accel_max_vfs, owner);
	if (IS_ERR(pf))
		return PTR_ERR(pf);

	mock_accel_pfs[id] = pf;
	return 0;
}

/* Must be called with mock_accel_pfs_lock held. */
static int mock_accel_pf_del(u32 id)
{
	struct mock_accel_fn *pf = mock_accel_pfs[id];

	if (!pf)
		return -ENODEV;

	mock_accel_pfs[id] = NULL;
	device_unregister(&pf->dev);	/* unbinds: VFs go first */
	return 0;
}

/*
 * Splits a line of at most @size - 1 bytes into at most @max words (spaces
 * or tabs between them), in place in @line. Returns how many, or -EINVAL.
 */
static int mock_accel_split(const char *buf, size_t count, char *line,
			    size_t size, char **words, int max)
{
	char *cur, *tok;
	int n = 0;

	if (count >= size)
		return -EINVAL;
	memcpy(line, buf, count);
	line[count] = '\0';

	cur = strim(line);
	while ((tok = strsep(&cur, " \t")) != NULL) {
		if (!*tok)
			continue;
		if (n == max)
			return -EINVAL;
		words[n++] = tok;
	}
	return n ? n : -EINVAL;
}

/*
 * new_device: "ID [NUMA_NODE [OWNER]]" adds PF ID (on node ID % numa_nodes
 * by default), owned by node OWNER if given.
 */
static ssize_t new_device_store(MOCK_ACCEL_BUS_TYPE *bus, const char *buf,
				size_t count)
{
	char line[16 + MOCK_ACCEL_OWNER_LEN], owner[MOCK_ACCEL_OWNER_LEN];
	char *words[3];
	u32 id, numa_node;
	int n, err;

	n = mock_accel_split(buf, count, line, sizeof(line), words,
			     ARRAY_SIZE(words));
	if (n < 0)
		return n;
	err = kstrtou32(words[0], 0, &id);
	if (!err && n > 1)
		err = kstrtou32(words[1], 0, &numa_node);
	if (!err && n > 2)
		err = mock_accel_owner_parse(words[2], strlen(words[2]), owner);
	if (err)
		return err;
	if (id >= MOCK_ACCEL_MAX_PFS)
		return -ERANGE;
	if (n < 2)
		numa_node = id % numa_nodes;
	else if (numa_node >= numa_nodes)
		return -ERANGE;

	mutex_lock(&mock_accel_pfs_lock);
	err = mock_accel_live ?
		mock_accel_pf_add(id, numa_node, n > 2 ? owner : NULL) : -ENODEV;
	mutex_unlock(&mock_accel_pfs_lock);

	return err ? err : count;
}
static BUS_ATTR_WO(new_device);

/* del_device: "ID" removes PF ID, its VFs first, whatever their state. */
static ssize_t del_device_store(MOCK_ACCEL_BUS_TYPE *bus, const char *buf,
				size_t count)
{
	char line[64], *word;
	u32 id;
	int n, err;

	n = mock_accel_split(buf, count, line, sizeof(line), &word, 1);
	if (n < 0)
		return n;
	err = kstrtou32(word, 0, &id);
	if (err)
		return err;
	if (id >= MOCK_ACCEL_MAX_PFS)
		return -ERANGE;

	mutex_lock(&mock_accel_pfs_lock);
	err = mock_accel_live ? mock_accel_pf_del(id) : -ENODEV;
	mutex_unlock(&mock_accel_pfs_lock);

	return err ? err : count;
}
static BUS_ATTR_WO(del_device);

/* fail_probe: the next N probes fail with -EIO (fault injection). */
static ssize_t fail_probe_show(MOCK_ACCEL_BUS_TYPE *bus, char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&mock_accel_fail_probes));
}

static ssize_t fail_probe_store(MOCK_ACCEL_BUS_TYPE *bus, const char *buf,
				size_t count)
{
	u32 n;
	int err;

	err = kstrtou32(buf, 0, &n);
	if (err)
		return err;
	if (n > MOCK_ACCEL_MAX_MINORS)
		return -ERANGE;

	atomic_set(&mock_accel_fail_probes, n);
	return count;
}
static BUS_ATTR_RW(fail_probe);

static struct attribute *mock_accel_bus_attrs[] = {
	&bus_attr_new_device.attr,
	&bus_attr_del_device.attr,
	&bus_attr_fail_probe.attr,
	NULL,
};
ATTRIBUTE_GROUPS(mock_accel_bus);

MOCK_ACCEL_BUS_TYPE mock_accel_bus = {
	.name = MOCK_ACCEL_NAME,
	.bus_groups = mock_accel_bus_groups,
	.dev_groups = mock_accel_fn_groups,
	.match = mock_accel_bus_match,
	.uevent = mock_accel_bus_uevent,
	.probe = mock_accel_bus_probe,
	.remove = mock_accel_bus_remove,
};

static struct device_driver mock_accel_driver = {
	.name = MOCK_ACCEL_NAME,
	.bus = &mock_accel_bus,
	.owner = THIS_MODULE,
	/*
	 * new_device and sriov_numvfs promise the devices exist when they
	 * return (ABI.md): never probe asynchronously, whatever async_probe
	 * or driver_async_probe= say.
	 */
	.probe_type = PROBE_FORCE_SYNCHRONOUS,
};

static int mock_accel_check_params(void)
{
	if (num_pfs > MOCK_ACCEL_MAX_PFS) {
		pr_err("num_pfs=%u is above %d\n", num_pfs, MOCK_ACCEL_MAX_PFS);
		return -EINVAL;
	}
	if (!numa_nodes || numa_nodes > MOCK_ACCEL_MAX_NUMA) {
		pr_err("numa_nodes=%u is not in 1..%d\n", numa_nodes,
		       MOCK_ACCEL_MAX_NUMA);
		return -EINVAL;
	}
	if (mock_accel_max_vfs > MOCK_ACCEL_MAX_VFS) {
		pr_err("max_vfs=%u is above %d\n", mock_accel_max_vfs,
		       MOCK_ACCEL_MAX_VFS);
		return -EINVAL;
	}
	if (!memory_mib || memory_mib > MOCK_ACCEL_MAX_MEMORY_MIB) {
		pr_err("memory_mib=%u is not in 1..%u\n", memory_mib,
		       MOCK_ACCEL_MAX_MEMORY_MIB);
		return -EINVAL;
	}
	if (mock_accel_fabric_attach_ms > MOCK_ACCEL_MAX_ATTACH_MS) {
		pr_err("fabric_attach_ms=%u is above %d\n",
		       mock_accel_fabric_attach_ms, MOCK_ACCEL_MAX_ATTACH_MS);
		return -EINVAL;
	}
	return 0;
}

static void mock_accel_del_all(void)
{
	u32 id;

	mutex_lock(&mock_accel_pfs_lock);
	mock_accel_live = false;
	for (id = 0; id < MOCK_ACCEL_MAX_PFS; id++)
		mock_accel_pf_del(id);
	mutex_unlock(&mock_accel_pfs_lock);
}

static int __init mock_accel_init(void)
{
	const char *host = init_utsname()->nodename;
	u32 id;
	int err;

	err = mock_accel_check_params();
	if (err)
		return err;

	if (!mock_accel_uuid_seed)
		mock_accel_uuid_seed = jhash(host, strlen(host), 0x6d6f636b) | 1;

	err = mock_accel_chr_region_init();
	if (err)
		return err;

	err = class_register(&mock_accel_class);
	if (err)
		goto err_region;

	err = bus_register(&mock_accel_bus);
	if (err)
		goto err_class;

	mock_accel_root = root_device_register(MOCK_ACCEL_NAME);
	if (IS_ERR(mock_accel_root)) {
		err = PTR_ERR(mock_accel_root);
		goto err_bus;
	}

	err = driver_register(&mock_accel_driver);
	if (err)
		goto err_root;

	mutex_lock(&mock_accel_pfs_lock);
	for (id = 0; id < num_pfs && !err; id++)
		err = mock_accel_pf_add(id, id % numa_nodes, NULL);
	mock_accel_live = !err;
	mutex_unlock(&mock_accel_pfs_lock);
	if (err)
		goto err_devices;

	pr_info("%u PFs on %u NUMA nodes, %u VFs each allowed, %u MiB each\n",
		num_pfs, numa_nodes, mock_accel_max_vfs, memory_mib);
	return 0;

err_devices:
	mock_accel_del_all();
	driver_unregister(&mock_accel_driver);
err_root:
	root_device_unregister(mock_accel_root);
err_bus:
	bus_unregister(&mock_accel_bus);
err_class:
	class_unregister(&mock_accel_class);
err_region:
	mock_accel_chr_region_exit();
	return err;
}

static void __exit mock_accel_exit(void)
{
	mock_accel_del_all();
	driver_unregister(&mock_accel_driver);
	root_device_unregister(mock_accel_root);
	bus_unregister(&mock_accel_bus);
	class_unregister(&mock_accel_class);
	mock_accel_chr_region_exit();
}

module_init(mock_accel_init);
module_exit(mock_accel_exit);

MODULE_AUTHOR("mock-device authors");
MODULE_DESCRIPTION("Mock PCIe accelerators with SR-IOV and hot-plug, for testing DRA drivers");
MODULE_LICENSE("GPL");
MODULE_VERSION("1.0.0");
