//! Prometheus metrics: one `mock_accel_` prefix, base units, `_total` on
//! counters, bounded labels. Rendered by the admin server at `/metrics`.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const INFO: &str = "mock_accel_agent_info";
pub const DEVICES: &str = "mock_accel_devices";
pub const DEVICES_SKIPPED: &str = "mock_accel_devices_skipped_total";
pub const DEVICES_UNPUBLISHABLE: &str = "mock_accel_devices_unpublishable";
pub const UEVENTS: &str = "mock_accel_uevents_total";
pub const UEVENTS_MALFORMED: &str = "mock_accel_uevents_malformed_total";
pub const UEVENT_OVERFLOWS: &str = "mock_accel_uevent_overflows_total";
pub const RESCANS: &str = "mock_accel_rescans_total";
pub const SCAN_SECONDS: &str = "mock_accel_scan_duration_seconds";
pub const PUBLISHES: &str = "mock_accel_publishes_total";
pub const SLICE_WRITES: &str = "mock_accel_slice_writes_total";
pub const API_ERRORS: &str = "mock_accel_api_errors_total";
pub const EVENT_TO_SLICE: &str = "mock_accel_event_to_slice_seconds";
pub const SLICES: &str = "mock_accel_resource_slices";
pub const POOL_GENERATION: &str = "mock_accel_pool_generation";
pub const SHARED_COUNTERS: &str = "mock_accel_shared_counters";
pub const HEALTH_TAINTS: &str = "mock_accel_health_taints";
pub const CONSUMABLE_CAPACITY: &str = "mock_accel_consumable_capacity";
pub const LIST_ATTRIBUTES: &str = "mock_accel_list_attributes";
pub const COMPATIBILITY_GROUPS: &str = "mock_accel_compatibility_groups";
pub const HOST_MEMORY_OVERHEAD: &str = "mock_accel_host_memory_overhead_bytes";
pub const TAINTED_DEVICES: &str = "mock_accel_tainted_devices";
pub const HEALTH_FLAPPING: &str = "mock_accel_health_flapping_devices";
pub const EBPF_AVAILABLE: &str = "mock_accel_ebpf_available";
pub const EBPF_ATTACHED: &str = "mock_accel_ebpf_attached";
pub const EBPF_ATTACHES: &str = "mock_accel_ebpf_attaches_total";
pub const EBPF_EVENTS: &str = "mock_accel_ebpf_events_total";
pub const EBPF_MALFORMED: &str = "mock_accel_ebpf_events_malformed_total";
pub const EBPF_DROPS: &str = "mock_accel_ebpf_ringbuf_drops_total";
pub const EVENT_MISMATCHES: &str = "mock_accel_event_mismatches_total";
pub const PREPARES: &str = "mock_accel_prepares_total";
pub const UNPREPARES: &str = "mock_accel_unprepares_total";
pub const PREPARE_SECONDS: &str = "mock_accel_prepare_duration_seconds";
pub const UNPREPARE_SECONDS: &str = "mock_accel_unprepare_duration_seconds";
pub const PREPARED_CLAIMS: &str = "mock_accel_prepared_claims";
pub const PREPARED_DEVICES: &str = "mock_accel_prepared_devices";
pub const CHECKPOINT_ERRORS: &str = "mock_accel_checkpoint_errors_total";
pub const PLUGIN_REGISTERED: &str = "mock_accel_plugin_registered";
pub const REGISTRATIONS: &str = "mock_accel_plugin_registrations_total";
pub const PLUGIN_REQUESTS: &str = "mock_accel_plugin_requests_total";
pub const SOCKET_RECREATIONS: &str = "mock_accel_plugin_socket_recreations_total";
pub const SOCKET_CHECK_FAILURES: &str = "mock_accel_plugin_socket_check_failures_total";
pub const HEALTH_STREAMS: &str = "mock_accel_health_streams";
pub const DEVICE_HEALTH: &str = "mock_accel_device_health";
pub const CLAIM_STATUS_UPDATES: &str = "mock_accel_claim_status_updates_total";
pub const FABRIC_ATTACHES: &str = "mock_accel_fabric_attaches_total";
pub const FABRIC_ATTACH_SECONDS: &str = "mock_accel_fabric_attach_duration_seconds";
pub const FABRIC_BINDING_PENDING: &str = "mock_accel_fabric_binding_pending";
pub const FABRIC_ERRORS: &str = "mock_accel_fabric_errors_total";
pub const FLEET_NODES: &str = "mock_accel_fleet_pools";
pub const FLEET_POOL_FAILURES: &str = "mock_accel_fleet_pool_failures_total";
pub const DECLARED_APPLIED: &str = "mock_accel_declared_applied_total";
pub const OWNER_TAKEN: &str = "mock_accel_owner_taken_total";
pub const OWNER_REFUSED: &str = "mock_accel_owner_refused_total";
pub const OWNER_RELEASED: &str = "mock_accel_owner_released_total";
pub const DECLARED_STEPS: &str = "mock_accel_declared_changes_total";
pub const DECLARED_STATUS_WRITES: &str = "mock_accel_declared_status_writes_total";
pub const DECLARED_ERRORS: &str = "mock_accel_declared_errors_total";
pub const DECLARED_FAULT_LATENESS: &str = "mock_accel_declared_fault_lateness_seconds";
pub const HEARTBEATS: &str = "mock_accel_heartbeats_total";
pub const HEARTBEAT_FAILURES: &str = "mock_accel_heartbeat_failures_total";
pub const PUBLISHER: &str = "mock_accel_publisher";
pub const CONTROLLER_LEADER: &str = "mock_accel_controller_leader";
pub const CONTROLLER_LEADER_TRANSITIONS: &str = "mock_accel_controller_leader_transitions_total";
pub const CONTROLLER_API_ERRORS: &str = "mock_accel_controller_api_errors_total";
pub const CONTROLLER_WATCH_ERRORS: &str = "mock_accel_controller_watch_errors_total";
pub const CONTROLLER_RECONCILES: &str = "mock_accel_controller_reconciles_total";
pub const CONTROLLER_AUDITS: &str = "mock_accel_controller_audits_total";
pub const CONTROLLER_DRIFT: &str = "mock_accel_controller_drift_total";
pub const CONTROLLER_CLEANUPS: &str = "mock_accel_controller_cleanups_total";
pub const CONTROLLER_EVENTS: &str = "mock_accel_controller_events_total";
pub const CLAIM_ALLOCATION_SECONDS: &str = "mock_accel_fleet_claim_allocation_seconds";

const PREPARE_BUCKETS: [f64; 14] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 45.0,
];

const WAIT_BUCKETS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(EVENT_TO_SLICE.into()), &LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SCAN_SECONDS.into()), &LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PREPARE_SECONDS.into()), &PREPARE_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(UNPREPARE_SECONDS.into()), &PREPARE_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(CLAIM_ALLOCATION_SECONDS.into()), &WAIT_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FABRIC_ATTACH_SECONDS.into()), &WAIT_BUCKETS))
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // A test process may have installed one already: keep ours local then.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(INFO, "Static facts about the agent (always 1).");
    describe_counter!(DECLARED_APPLIED, "DeviceScenario generations applied on this node.");
    describe_gauge!(
        FLEET_NODES,
        "--mode=fleet: selected nodes by state (served: a pool runs; published: its slices are as its devices are; waiting: beyond --fleet-max-nodes)."
    );
    describe_counter!(
        FLEET_POOL_FAILURES,
        "--mode=fleet: node pools that could not start or whose task failed (restarted 5 s later)."
    );
    describe_counter!(
        OWNER_TAKEN,
        "PFs this node took on a shared kernel (at each load of the module)."
    );
    describe_counter!(
        OWNER_REFUSED,
        "PFs asked for by id on a shared kernel that another node owns."
    );
    describe_counter!(
        OWNER_RELEASED,
        "PFs of nodes gone from the cluster given back by the controller (shared kernel)."
    );
    describe_counter!(
        DECLARED_STEPS,
        "Device changes made for DeviceScenarios, by kind (DeviceAdded, HealthSet, ...)."
    );
    describe_histogram!(
        DECLARED_FAULT_LATENESS,
        Unit::Seconds,
        "How late scheduled DeviceScenario faults started or ended against their time."
    );
    describe_counter!(
        DECLARED_STATUS_WRITES,
        "Writes of this node's entry in DeviceScenarios' status."
    );
    describe_counter!(
        DECLARED_ERRORS,
        "DeviceScenario failures, by stage (watch, parse, apply, status, event)."
    );
    describe_gauge!(
        DEVICES,
        "mock-accel functions on this node, by type (pf/vf) and NUMA node."
    );
    describe_counter!(
        DEVICES_SKIPPED,
        "Functions left out of the slices because of a missing or broken sysfs attribute, by reason."
    );
    describe_gauge!(DEVICES_UNPUBLISHABLE, "Functions currently left out of the slices.");
    describe_counter!(
        UEVENTS,
        "mock-accel and module uevents received, by source (kernel/udev) and action."
    );
    describe_counter!(UEVENTS_MALFORMED, "Uevents that could not be parsed, by source.");
    describe_counter!(
        UEVENT_OVERFLOWS,
        "Times the kernel dropped uevents (ENOBUFS), each followed by a full rescan."
    );
    describe_counter!(
        RESCANS,
        "sysfs scans, by reason (startup, uevent, module, overflow, periodic)."
    );
    describe_histogram!(SCAN_SECONDS, Unit::Seconds, "Time to scan sysfs.");
    describe_counter!(PUBLISHES, "Publish rounds, by result (changed, unchanged, failed).");
    describe_counter!(
        SLICE_WRITES,
        "ResourceSlice writes, by verb (create/update/delete) and result (success/conflict/error)."
    );
    describe_counter!(
        API_ERRORS,
        "Kubernetes API errors, by kind (conflict, not_found, invalid, denied, throttled, server, network, other)."
    );
    describe_histogram!(
        EVENT_TO_SLICE,
        Unit::Seconds,
        "Time from receiving a kernel event to the API server accepting the slices that reflect it."
    );
    describe_gauge!(SLICES, "ResourceSlices this agent publishes.");
    describe_gauge!(POOL_GENERATION, "Generation of this node's pool.");
    describe_gauge!(
        SHARED_COUNTERS,
        "1 while PF/VF exclusion is published as shared counters, 0 when off or dropped by the cluster."
    );
    describe_gauge!(
        HEALTH_TAINTS,
        "1 while device health is published as device taints, 0 when off or dropped by the cluster."
    );
    describe_gauge!(
        CONSUMABLE_CAPACITY,
        "1 while PFs are published shared by memory (consumable capacity), 0 when off or dropped by the cluster."
    );
    describe_gauge!(
        LIST_ATTRIBUTES,
        "1 while devices are published with list-typed attributes (capabilityList), 0 when off or dropped by the cluster."
    );
    describe_gauge!(
        COMPATIBILITY_GROUPS,
        "1 while counter consumptions are published with compatibility groups (pf, sriov), 0 when off, without counters, or dropped by the cluster."
    );
    describe_gauge!(
        HOST_MEMORY_OVERHEAD,
        "The host memory overhead per pod each device declares (nodeAllocatableResources), 0 when off or dropped by the cluster."
    );
    describe_gauge!(
        TAINTED_DEVICES,
        "Devices published with a health taint, by effect (NoSchedule/NoExecute for failed, None for degraded)."
    );
    describe_gauge!(
        HEALTH_FLAPPING,
        "Devices whose health is flapping, published at their worst health until stable (flap damping)."
    );
    describe_gauge!(
        EBPF_AVAILABLE,
        "1 if the eBPF probes could be loaded here, 0 if the agent runs on uevents alone."
    );
    describe_gauge!(
        EBPF_ATTACHED,
        "1 while the eBPF probes are attached to the loaded module."
    );
    describe_counter!(
        EBPF_ATTACHES,
        "Times the eBPF probes were attached (once per module load)."
    );
    describe_counter!(
        EBPF_EVENTS,
        "Probes and removes seen by eBPF, by kind (probe, probe_failed, remove)."
    );
    describe_counter!(EBPF_MALFORMED, "Ring-buffer records that were not an event.");
    describe_counter!(
        EBPF_DROPS,
        "Events the eBPF programs could not put in the full ring buffer."
    );
    describe_counter!(
        EVENT_MISMATCHES,
        "Device events seen by one source (uevent or eBPF) but not the other within 2 s."
    );
    describe_counter!(
        PREPARES,
        "Claims prepared for the kubelet, by result (success/error) and reason (none, not_found, uid_mismatch, \
         not_allocated, wrong_driver, wrong_node, unknown_device, device_gone, unhealthy, not_attached, conflict, invalid, api, \
         sysfs, cdi, checkpoint, lock)."
    );
    describe_counter!(UNPREPARES, "Claims released for the kubelet, by result and reason.");
    describe_histogram!(PREPARE_SECONDS, Unit::Seconds, "Time to prepare one claim.");
    describe_histogram!(UNPREPARE_SECONDS, Unit::Seconds, "Time to release one claim.");
    describe_counter!(
        FABRIC_ATTACHES,
        "Fabric attaches for allocated claims, by outcome reported to the scheduler (attached/failed/gone)."
    );
    describe_histogram!(
        FABRIC_ATTACH_SECONDS,
        Unit::Seconds,
        "From the agent's seeing a claim allocated on a fabric-attached device to its reporting the attach's outcome: \
         the binding-condition wait the agent causes."
    );
    describe_gauge!(
        FABRIC_BINDING_PENDING,
        "Allocated fabric-attached devices whose binding condition is not reported yet (pods the scheduler holds)."
    );
    describe_counter!(
        FABRIC_ERRORS,
        "Failures of the binding reporter, by kind (sysfs: an attach or detach write; status: a claim status write)."
    );
    describe_gauge!(PREPARED_CLAIMS, "Claims prepared on this node (the checkpoint's).");
    describe_gauge!(PREPARED_DEVICES, "Devices of the prepared claims.");
    describe_counter!(
        CHECKPOINT_ERRORS,
        "Checkpoint problems, by kind (corrupt, future_version, foreign, io, write)."
    );
    describe_gauge!(
        PLUGIN_REGISTERED,
        "1 once the kubelet accepted the plugin's registration, 0 before or if it refused."
    );
    describe_counter!(
        REGISTRATIONS,
        "Registration verdicts from the kubelet, by result (accepted/rejected)."
    );
    describe_counter!(
        PLUGIN_REQUESTS,
        "gRPC calls from the kubelet, by api (registration, v1, v1beta1, v1alpha1) and method."
    );
    describe_counter!(
        SOCKET_RECREATIONS,
        "Times a plugin socket (registration/dra) was found removed or replaced and was listened on again."
    );
    describe_counter!(
        SOCKET_CHECK_FAILURES,
        "Self-checks where a plugin socket did not answer."
    );
    describe_gauge!(
        HEALTH_STREAMS,
        "Open device health streams (kubelet NodeWatchResources)."
    );
    describe_gauge!(
        DEVICE_HEALTH,
        "Devices by health as reported to the kubelet (healthy/unhealthy/unknown)."
    );
    describe_counter!(
        CLAIM_STATUS_UPDATES,
        "Reports of prepared devices in ResourceClaim status.devices, by result (written/unchanged/error)."
    );
    describe_counter!(
        HEARTBEATS,
        "Heartbeat Lease renewals written (a fleet: all its nodes')."
    );
    describe_counter!(
        HEARTBEAT_FAILURES,
        "Heartbeat Lease renewals that failed (retried at the next beat)."
    );
    describe_gauge!(
        PUBLISHER,
        "1 while this agent publishes the node's ResourceSlices; 0 while it waits for its turn or after it stepped aside for a newer agent pod on the node."
    );
    describe_gauge!(
        CONTROLLER_LEADER,
        "1 while this controller instance holds the leader Lease."
    );
    describe_counter!(
        CONTROLLER_LEADER_TRANSITIONS,
        "Times this instance became or stopped being the leader."
    );
    describe_counter!(
        CONTROLLER_API_ERRORS,
        "Failed controller API requests, by operation and kind."
    );
    describe_counter!(
        CONTROLLER_WATCH_ERRORS,
        "Controller watch failures (each resumed with backoff), by resource."
    );
    describe_counter!(CONTROLLER_RECONCILES, "Passes over the watched cluster state.");
    describe_counter!(
        CONTROLLER_AUDITS,
        "Full audits (every --rescan-interval), by result (clean/drift/error)."
    );
    describe_counter!(
        CONTROLLER_DRIFT,
        "What audits found and fixed that the watches had not, by kind."
    );
    describe_counter!(
        CONTROLLER_CLEANUPS,
        "ResourceSlices deleted by the controller, by reason."
    );
    describe_counter!(
        CONTROLLER_EVENTS,
        "Kubernetes Events recorded by the controller, by reason."
    );
    describe_histogram!(
        CLAIM_ALLOCATION_SECONDS,
        Unit::Seconds,
        "Time from a claim's creation to its allocation, for claims seen pending, by DeviceClass."
    );
}

/// A bounded label for an API error.
pub fn api_error_kind(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => "conflict",
            404 => "not_found",
            // RBAC or an admission policy said no (or the token is bad).
            401 | 403 => "denied",
            422 | 400 => "invalid",
            429 => "throttled",
            500..=599 => "server",
            _ => "other",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) if timed_out(e) => "timeout",
        kube::Error::HyperError(_) | kube::Error::Service(_) => "network",
        _ => "other",
    }
}

/// Whether a request failed by its timeout (`--api-timeout`).
fn timed_out(e: &kube::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || c.to_string().contains("elapsed")
        {
            return true;
        }
        cause = c.source();
    }
    false
}
