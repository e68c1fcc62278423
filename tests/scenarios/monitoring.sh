# Prometheus and Grafana for real (sourced by helm.sh while the chart is
# installed): Debian's Prometheus on the node, with a ServiceAccount of its
# own, discovers the chart's metrics Services through the real API
# (kubernetes_sd_configs, role endpointslice), scrapes the node agent's and
# the controller's pods, and every query of both dashboards must return data
# while devices are hot-plugged and claims prepared, one prepare failing and
# slice writes refused on the way.
# Needs lib.sh, node.sh and helm.sh's helpers (drv, agent, cls, has, jp,
# devices, has_devices, running, gone_pod, agent_logs).

PROM=http://127.0.0.1:9090
PROM_DIR=/tmp/prometheus

# promql QUERY: the series of an instant query, `{labels} VALUE` per line
promql() { guest-tool promql "$1"; }

# prometheus_up NS WHAT: Prometheus started, both of the chart's targets up
prometheus_up() {
    kubectl create namespace monitoring >/dev/null
    kubectl create serviceaccount prometheus -n monitoring >/dev/null
    # What Prometheus's kubernetes_sd needs, as its docs list it.
    kubectl create clusterrole prometheus-discovery --verb=get,list,watch \
        --resource=services,endpoints,pods,nodes,endpointslices.discovery.k8s.io >/dev/null
    kubectl create clusterrolebinding prometheus-discovery --clusterrole=prometheus-discovery \
        --serviceaccount=monitoring:prometheus >/dev/null
    mkdir -p $PROM_DIR
    kubectl create token prometheus -n monitoring --duration=2h >$PROM_DIR/token
    # Every namespace: a user's Prometheus finds the driver wherever it is
    # installed, by the chart's Service label and port name.
    cat >$PROM_DIR/prometheus.yml <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
scrape_configs:
  - job_name: mock-device
    kubernetes_sd_configs:
      - role: endpointslice
        api_server: https://127.0.0.1:6443
        tls_config:
          ca_file: /etc/kubernetes/pki/ca.crt
        authorization:
          credentials_file: $PROM_DIR/token
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_label_mock_device_metrics]
        regex: "true"
        action: keep
      - source_labels: [__meta_kubernetes_endpointslice_port_name]
        regex: metrics
        action: keep
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_service_name]
        target_label: service
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
EOF
    prometheus --config.file=$PROM_DIR/prometheus.yml --storage.tsdb.path=$PROM_DIR/data \
        --web.listen-address=127.0.0.1:9090 --log.level=warn >$PROM_DIR/log 2>&1 &
    PROM_PID=$!
    WAIT_INTERVAL=1 wait_until 120 guest-tool http GET $PROM/-/ready >/dev/null 2>&1 ||
        { not_ok "$2: Prometheus ready"; cat $PROM_DIR/log; return 1; }
    # Two targets up: the node agent's pod and the controller's, by the
    # Services' EndpointSlices.
    _up() { [ "$(promql 'count(up{job="mock-device"} == 1)' | awk '{print $2}')" = 2 ]; }
    WAIT_INTERVAL=1 wait_until 120 _up
    _targets=$(promql 'up{job="mock-device"}')
    echo "$_targets"
    check "$2: Prometheus found both metrics Services through the API and scrapes their pods" \
        "mock-accel-controller-metrics 1 mock-accel-node-agent-metrics 1" \
        "$(echo "$_targets" | sed -n 's/.*service="\([^"]*\)".* \([0-9]*\)$/\1 \2/p' | sort | tr '\n' ' ' | sed 's/ $//')"
    check_true "$2: the targets are the pods (namespace $1)" has "$_targets" "namespace=\"$1\",pod=\"$agent-"
}

# failed_prepare WHAT: a claim for a device whose health is failed, which
# tolerates its taint: the scheduler allocates it, the agent refuses to
# prepare it, the kubelet reports it, then the device is mended
failed_prepare() {
    _uuid=$(cat $cls/mock1_vf1/uuid)
    put $cls/mock1_vf1/health failed
    _taint() { kubectl get resourceslices -l driver=$drv -o jsonpath='{.items[*].spec.devices[*].taints[*].value}' | grep -q failed; }
    WAIT_INTERVAL=0.5 wait_until 60 _taint || not_ok "$1: the failed VF's taint published"
    TOLERATE=NoSchedule claim broken-claim mock-accel-vf "device.attributes[\"$drv\"].uuid == \"$_uuid\""
    claim_pod broken-pod broken-claim
    _refused() { promql 'mock_accel_prepares_total{result="error"}' | grep -q 'reason="unhealthy"'; }
    WAIT_INTERVAL=1 wait_until 120 _refused
    check_true "$1: the failed device's prepare is refused (reason unhealthy in the metrics)" _refused
    _ev=$(kubectl get events -n default --field-selector involvedObject.name=broken-pod -o jsonpath='{.items[*].message}')
    check_true "$1: the kubelet reports the agent's reason on the pod ($(echo "$_ev" | head -c 300))" \
        has "$_ev" "is failed (health=failed)"
    check "$1: the pod does not start" Pending "$(phase broken-pod)"
    kubectl delete pod broken-pod --wait=false >/dev/null
    wait_gone_pod 120 broken-pod || not_ok "$1: broken-pod deleted"
    kubectl delete resourceclaim broken-claim >/dev/null
    put $cls/mock1_vf1/health ok
}

# refused_writes NS WHAT: the ClusterRole without the slice write verbs (an
# RBAC mistake): a hot-plug's slice write is refused and counted; the agent
# keeps serving and publishes once the verbs are back
refused_writes() {
    kubectl patch clusterrole $agent --type=json \
        -p '[{"op":"replace","path":"/rules/0/verbs","value":["get","list","watch"]}]' >/dev/null
    put $cls/mock2/sriov_numvfs 1
    _denied() { promql 'mock_accel_api_errors_total' | grep -q 'kind="denied"'; }
    WAIT_INTERVAL=1 wait_until 90 _denied
    check_true "$2: with the slice write verbs gone, the agent's write is refused and counted (kind denied)" _denied
    check "$2: the new VF is not published meanwhile" no "$(devices | grep -q mock2-vf0 && echo yes || echo no)"
    kubectl patch clusterrole $agent --type=json \
        -p '[{"op":"replace","path":"/rules/0/verbs","value":["get","list","watch","create","update","delete"]}]' >/dev/null
    _published() { devices | grep -q mock2-vf0; }
    WAIT_INTERVAL=0.5 wait_until 120 _published
    check_true "$2: the verbs back, the agent publishes the VF without a restart" _published
    check "$2: no restart of the node agent" 0 \
        "$(kubectl get pods -n "$1" -l app=$agent -o jsonpath='{.items[0].status.containerStatuses[0].restartCount}')"
}

# prepared_cycle WHAT: a VF claimed, the pod Running, then deleted
# (prepare and unprepare through the real kubelet)
prepared_cycle() {
    claim vf-claim mock-accel-vf
    claim_pod vf-pod vf-claim
    wait_running 180 vf-pod || not_ok "$1: vf-pod Running"
    kubectl delete pod vf-pod --wait=false >/dev/null
    wait_gone_pod 120 vf-pod || not_ok "$1: vf-pod deleted"
    kubectl delete resourceclaim vf-claim >/dev/null
}

# monitoring NS WHAT: the whole of it, with the seed's test pod prepared
monitoring() {
    prometheus_up "$1" "$2" || { agent_logs "$1"; return 1; }
    failed_prepare "$2"
    refused_writes "$1" "$2"
    prepared_cycle "$2"
    put $cls/mock2/sriov_numvfs 0
    _unplugged() { ! devices | grep -q mock2-vf0; }
    _plugged() { devices | grep -q mock2-vf0; }
    WAIT_INTERVAL=0.5 wait_until 60 _unplugged || not_ok "$2: mock2-vf0 unpublished"
    # A rate needs an observation after a series' first sample (which
    # holds the first one): the event -> slice latency's series (one per
    # clock, kernel or uevent, whichever came first) may be that young.
    # Hot-plug a VF in and out until Prometheus has a rate, 5 rounds at most.
    _latency() { promql 'sum(rate(mock_accel_event_to_slice_seconds_count[2m]))' | awk '{ ok = $2 > 0 } END { exit !ok }'; }
    _round=0
    while [ $_round -lt 5 ] && ! _latency; do
        put $cls/mock2/sriov_numvfs 1
        WAIT_INTERVAL=0.5 wait_until 60 _plugged
        put $cls/mock2/sriov_numvfs 0
        WAIT_INTERVAL=0.5 wait_until 60 _unplugged
        sleep 5
        _round=$((_round + 1))
    done
    echo "# $2: $_round more hot-plug rounds for the latency's rate"
    # Grafana's $__rate_interval over a dashboard of the last hours is
    # minutes; 10m covers what happened above, under emulation (2m did not
    # on a slow run: the prepares were more than 2 minutes old by the
    # query, and the latency histograms' rates were empty). Scrapes lag
    # under emulation (once, 6 s after the last hot-plug Prometheus had not
    # seen its latency yet): up to a minute for every query to have data.
    _all_data() { guest-tool dashboards --node "$NODE_NAME" --rate-interval 10m >/dev/null 2>&1; }
    WAIT_INTERVAL=5 wait_until 60 _all_data
    _d=$(guest-tool dashboards --node "$NODE_NAME" --rate-interval 10m)
    _rc=$?
    echo "$_d"
    [ "$_rc" = 0 ] || promql '{__name__=~"mock_accel_(event_to_slice_seconds_count|publishes_total)"}'
    check "$2: every query of both dashboards returns data ($(echo "$_d" | tail -n 1))" 0 "$_rc"
    kill $PROM_PID 2>/dev/null
    wait $PROM_PID 2>/dev/null
    kubectl delete namespace monitoring --wait=false >/dev/null
    kubectl delete clusterrolebinding prometheus-discovery >/dev/null
    kubectl delete clusterrole prometheus-discovery >/dev/null
}
