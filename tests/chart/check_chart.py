#!/usr/bin/env python3
"""The Helm chart, checked with real Helm (helm-python-sdk: the Helm v4 Go SDK)
and the official Kubernetes schemas (kubernetes-validate, 1.34 to 1.37).

Renders the defaults and every command line of the seed chart README, checks
each rendered object, the seed's parameters and defaults, what the seed got
wrong, the schema's refusals, and that the chart ships the dashboards of
`dashboards/` byte for byte. Exit status 0 when everything holds.
"""
import json
import os
import pathlib
import subprocess
import sys

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "chart"
DRIVER = "mock-accel.example.com"
K8S_VERSIONS = ["1.34.0", "1.35.0", "1.36.0", "1.37.0"]

# The seed README's parameter tables: (parameter, default).
SEED_DEFAULTS = {
    "global.imagePullSecrets": [],
    "namespace.create": True,
    "namespace.name": "mock-device",
    "draDriver.name": DRIVER,
    "draDriver.controller.enabled": True,
    "draDriver.controller.image.repository": "ghcr.io/fabiendupont/mock-accel-dra-driver",
    "draDriver.controller.image.tag": "",
    "draDriver.controller.image.pullPolicy": "IfNotPresent",
    "draDriver.controller.rescanInterval": "30s",
    "draDriver.controller.verbosity": 5,
    "draDriver.nodeAgent.enabled": True,
    "draDriver.nodeAgent.image.repository": "ghcr.io/fabiendupont/mock-accel-dra-driver",
    "draDriver.nodeAgent.image.tag": "",
    "draDriver.nodeAgent.verbosity": 5,
    "draDriver.nodeAgent.pluginSocket": "/var/lib/kubelet/plugins/mock-accel.example.com",
    "kernelModule.enabled": False,
    "kernelModule.moduleName": "mock-accel",
    "kernelModule.image.repository": "ghcr.io/fabiendupont/mock-accel-module",
    # The seed's v1.0.0-fc43 fitted one kernel only (issue 14 §3.6): empty
    # maps each kernel to its own image (KMM's ${KERNEL_FULL_VERSION}).
    "kernelModule.image.tag": "",
    "deviceClasses[0].name": "mock-accel-pf",
    "deviceClasses[0].enabled": True,
    "deviceClasses[1].name": "mock-accel-vf",
    "deviceClasses[1].enabled": True,
    "rbac.create": True,
    "serviceAccount.create": True,
    "serviceAccount.annotations": {},
}

MULTI_DISTRO = """kernelModule.kernelMappings=[
    {"regexp":"^.*\\\\.fc43\\\\.x86_64$","containerImage":"ghcr.io/fabiendupont/mock-accel-module:v1.0.0-fc43"},
    {"regexp":"^.*\\\\.fc44\\\\.x86_64$","containerImage":"ghcr.io/fabiendupont/mock-accel-module:v1.0.0-fc44"}
  ]"""

# The seed README's command lines: (what, release namespace, --set, --set-json).
SEED_COMMANDS = [
    ("TL;DR", "default", [], []),
    ("standard", "mock-device", [], []),
    ("full (KMM)", "mock-device", ["kernelModule.enabled=true", "kernelModule.image.tag=v1.0.0-fc43"], []),
    ("custom registry", "mock-device", [
        "draDriver.controller.image.repository=myregistry.io/mock-accel-dra-driver",
        "draDriver.nodeAgent.image.repository=myregistry.io/mock-accel-dra-driver"], []),
    ("minimal", "default", ["kernelModule.enabled=false"], []),
    ("verbosity", "default", ["kernelModule.enabled=true", "draDriver.controller.verbosity=10",
                              "draDriver.nodeAgent.verbosity=10"], []),
    ("multi-distro", "default", ["kernelModule.enabled=true"], [MULTI_DISTRO]),
    ("everything on", "mock-device", ["metrics.serviceMonitor.enabled=true", "dashboards.enabled=true",
                                      "metrics.serviceMonitor.additionalLabels.release=kube-prometheus-stack",
                                      "draDriver.controller.replicas=2", "global.imagePullSecrets={regcred}",
                                      "kernelModule.enabled=true",
                                      "kernelModule.parameters={fabric_attach_ms=5000,num_pfs=8}"], []),
    # A values file written for the seed chart (its values.yaml's keys).
    ("seed values file", "mock-device", ["nameOverride=accel", "fullnameOverride=accel-full",
                                         "kernelModule.enabled=true", "kernelModule.nodeSelector.kubernetes\\.io/os=linux"],
     ['global.imagePullSecrets=[{"name":"regcred"}]',
      'draDriver.nodeAgent.securityContext={"privileged":true,"runAsUser":0}',
      "deviceClasses=" + json.dumps([
          {"name": n, "enabled": True, "selector": {"cel": f'device.attributes["{DRIVER}"].deviceType == "{t}"'}}
          for n, t in [("mock-accel-pf", "pf"), ("mock-accel-vf", "vf"), ("mock-accel-vf-2gb", "vf")]])]),
    ("least privilege", "mock-device", ["draDriver.nodeAgent.securityContext=null"], []),
]

# Fields of the two CRDs we render, as their CRDs define them (KMM
# kmm.sigs.x-k8s.io_modules v1beta1; prometheus-operator servicemonitors v1).
KMM_FIELDS = {
    "spec": {"moduleLoader", "devicePlugin", "imageRepoSecret", "selector", "tolerations"},
    "spec.moduleLoader": {"container", "serviceAccountName"},
    "spec.moduleLoader.container": {"modprobe", "version", "imagePullPolicy", "build", "sign", "registryTLS",
                                    "containerImage", "kernelMappings", "inTreeModulesToRemove"},
    "spec.moduleLoader.container.modprobe": {"moduleName", "dirName", "args", "rawArgs", "firmwarePath",
                                             "parameters", "modulesLoadingOrder"},
    "spec.moduleLoader.container.kernelMappings[]": {"literal", "regexp", "containerImage", "build", "sign",
                                                     "registryTLS", "inTreeModulesToRemove"},
    "spec.imageRepoSecret": {"name"},
}
SM_FIELDS = {
    "spec": {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
             "sampleLimit", "scrapeProtocols", "targetLimit", "labelLimit", "attachMetadata", "scrapeClass",
             "bodySizeLimit", "fallbackScrapeProtocol", "selectorMechanism", "serviceDiscoveryRole"},
    "spec.namespaceSelector": {"any", "matchNames"},
    "spec.endpoints[]": {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
                         "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings", "tlsConfig",
                         "authorization", "basicAuth", "oauth2", "bearerTokenSecret", "followRedirects",
                         "enableHttp2", "proxyUrl", "filterRunning", "trackTimestampsStaleness"},
}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")


def walk(obj, spec_fields, where):
    """Every key at each listed path is a field the CRD has."""
    def at(node, path):
        parts = path.split(".")
        nodes = [node]
        for p in parts:
            many = p.endswith("[]")
            key = p[:-2] if many else p
            nxt = []
            for n in nodes:
                v = n.get(key) if isinstance(n, dict) else None
                if v is None:
                    continue
                nxt.extend(v if many else [v])
            nodes = nxt
        return nodes
    for path, allowed in spec_fields.items():
        for n in at(obj, path):
            extra = set(n) - allowed
            check(not extra, f"{where}: {path} has fields the CRD does not: {sorted(extra)}")


def values_for(sets, jsons):
    vals = {}
    for s in sets:
        merge(vals, helm.parse_set_string(s))
    for j in jsons:
        merge(vals, helm.parse_set_json(j))
    return vals


def merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            merge(a[k], v)
        else:
            a[k] = v


def render(chart, values, namespace):
    chart.validate_schema(values)
    out = chart.render(values, name="mock-device", namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                docs.append((path, d))
    return docs, out


def validate_builtin(docs, where):
    for path, d in docs:
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        if group in ("kmm.sigs.x-k8s.io", "monitoring.coreos.com"):
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except Exception as e:  # ValidationError, or a kind the version lacks
                check(False, f"{where}: {d['kind']} {d['metadata'].get('name')} ({path}) invalid for {v}: {e}")


def agent_binary():
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        b = target / profile / "mock-accel-agent"
        if b.is_file():
            return b
    return None


def check_args(args, env, where):
    """The rendered command line parses with the real agent (clap checks every
    flag and value before it reaches --version)."""
    binary = agent_binary()
    if binary is None:
        check(False, "mock-accel-agent is not built: cargo build -p mock-accel-agent")
        return
    r = subprocess.run([binary, *args, "--version"], capture_output=True, text=True,
                       env={"PATH": os.environ.get("PATH", ""), **env})
    check(r.returncode == 0, f"{where}: the agent refuses the chart's arguments {args}: {r.stderr.strip()}")


def refused(chart, cases):
    """Each (--set values, words): the chart refuses to render, saying the words."""
    for sets, says in cases:
        try:
            render(chart, values_for(sets, []), "mock-device")
            check(False, f"{sets} rendered")
        except helm.HelmError as e:
            check(says in str(e), f"{sets}: {e}")


def get(values, dotted):
    cur = values
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        cur = cur[int(part)] if part.isdigit() else cur[part]
    return cur


def kinds(docs):
    return {(d["kind"], d["metadata"]["name"]): d for _, d in docs}


def main():
    chart = helm.Chart.load(str(CHART))
    check(chart.metadata["version"] == "1.0.0" and chart.metadata["appVersion"] == "1.0.0",
          f"chart version/appVersion 1.0.0: {chart.metadata}")

    # Lint: no warning or error (severity 1 is INFO).
    for vals in [{}, values_for(["kernelModule.enabled=true", "metrics.serviceMonitor.enabled=true",
                                  "dashboards.enabled=true"], [])]:
        report = helm.lint(str(CHART), vals, strict=True)
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) > 1] + report.get("errors", [])
        check(not bad, f"helm lint: {bad}")

    # The seed's parameters and defaults.
    defaults = chart.values
    for param, want in SEED_DEFAULTS.items():
        try:
            got = get(defaults, param)
        except (KeyError, IndexError):
            check(False, f"seed parameter {param} missing")
            continue
        check(got == want, f"default of {param}: {got!r}, the seed says {want!r}")

    for what, ns, sets, jsons in SEED_COMMANDS:
        vals = values_for(sets, jsons)
        docs, raw = render(chart, vals, ns)
        validate_builtin(docs, what)
        objs = kinds(docs)
        merged = chart.merge_values(vals)
        target_ns = merged["namespace"]["name"]
        # The namespace: created only when it is not the release's own.
        has_ns = ("Namespace", target_ns) in objs
        check(has_ns == (ns != target_ns), f"{what}: Namespace object rendered={has_ns} with release namespace {ns}")
        if has_ns:
            check(objs[("Namespace", target_ns)]["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep",
                  f"{what}: the namespace is kept on uninstall")
            labels = objs[("Namespace", target_ns)]["metadata"]["labels"]
            check(labels.get("pod-security.kubernetes.io/enforce") == "privileged",
                  f"{what}: the namespace's Pod Security level is privileged: {labels}")
        for (kind, name), d in objs.items():
            if d["metadata"].get("namespace") is not None and kind != "Namespace":
                check(d["metadata"]["namespace"] in (target_ns, "default"), f"{what}: {kind} {name} namespace")
        # Labels the seed's commands select on.
        ctl = objs[("Deployment", "mock-accel-controller")]
        ds = objs[("DaemonSet", "mock-accel-node-agent")]
        check(ctl["spec"]["template"]["metadata"]["labels"]["app"] == "mock-accel-controller", f"{what}: controller label")
        check(ds["spec"]["template"]["metadata"]["labels"]["app"] == "mock-accel-node-agent", f"{what}: agent label")
        cargs = ctl["spec"]["template"]["spec"]["containers"][0]["args"]
        check("--mode=controller" in cargs, f"{what}: controller mode")
        check(f"--v={merged['draDriver']['controller']['verbosity']}" in cargs, f"{what}: controller verbosity {cargs}")
        check(f"--rescan-interval={merged['draDriver']['controller']['rescanInterval']}" in cargs,
              f"{what}: rescan interval")
        pod = ds["spec"]["template"]["spec"]
        agent = pod["containers"][0]
        check_args(cargs, {}, f"{what}: controller")
        check_args(agent["args"], {"NODE_NAME": "n", "POD_UID": "u", "POD_NAMESPACE": "ns"}, f"{what}: node agent")
        check(f"--v={merged['draDriver']['nodeAgent']['verbosity']}" in agent["args"], f"{what}: agent verbosity")
        check(f"--plugin-socket={merged['draDriver']['nodeAgent']['pluginSocket']}" in agent["args"],
              f"{what}: plugin socket")
        for c, comp in [(ctl["spec"]["template"]["spec"]["containers"][0], "controller"), (agent, "nodeAgent")]:
            repo = merged["draDriver"][comp]["image"]["repository"]
            check(c["image"] == f"{repo}:1.0.0", f"{what}: {comp} image {c['image']}")
            check(c["livenessProbe"]["httpGet"]["path"] == "/livez" and c["readinessProbe"]["httpGet"]["path"] == "/readyz",
                  f"{what}: {comp} probes")
        # Rolling update without a gap; node-critical; least privilege.
        check(ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}, f"{what}: surge")
        check(pod["priorityClassName"] == "system-node-critical", f"{what}: priority class")
        env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in agent["env"]}
        check(env.get("POD_UID") == "metadata.uid" and env.get("NODE_NAME") == "spec.nodeName", f"{what}: env {env}")
        # Privileged by default (sysfs writes under AppArmor/SELinux, bpf()
        # under old seccomp profiles); {} is least privilege.
        sc = agent["securityContext"]
        if merged["draDriver"]["nodeAgent"].get("securityContext"):
            check(sc == merged["draDriver"]["nodeAgent"]["securityContext"], f"{what}: agent securityContext {sc}")
        else:
            check(not sc.get("privileged") and sc["capabilities"]["drop"] == ["ALL"]
                  and set(sc["capabilities"].get("add", [])) <= {"BPF", "PERFMON"}, f"{what}: agent capabilities {sc}")
        check(objs[("Deployment", "mock-accel-controller")]["metadata"]["labels"]["app.kubernetes.io/name"]
              == (merged.get("nameOverride") or "mock-device"), f"{what}: nameOverride")
        # DeviceClasses check the driver and the device type (or the seed's CEL).
        for name, t in [("mock-accel-pf", "pf"), ("mock-accel-vf", "vf")]:
            expr = objs[("DeviceClass", name)]["spec"]["selectors"][0]["cel"]["expression"]
            check(f'device.driver == "{DRIVER}"' in expr and f'deviceType == "{t}"' in expr, f"{what}: {name}: {expr}")
        # Claim status from 1.36 needs resourceclaims/driver (associated-node).
        agent_rules = objs[("ClusterRole", "mock-accel-node-agent")]["rules"]
        check(any(r["resources"] == ["resourceclaims/driver"] and r.get("resourceNames") == [DRIVER]
                  and set(r["verbs"]) == {"associated-node:update", "associated-node:patch"} for r in agent_rules),
              f"{what}: resourceclaims/driver associated-node rule")
        # RBAC: no wildcard, the controller may not write slices.
        for (kind, name), d in objs.items():
            if kind in ("ClusterRole", "Role"):
                for r in d["rules"]:
                    check("*" not in r["verbs"] and "*" not in r["resources"], f"{what}: {kind} {name} wildcard")
        ctl_rules = objs[("ClusterRole", "mock-accel-controller")]["rules"]
        check(not any("resourceslices" in r["resources"] and ({"create", "update"} & set(r["verbs"])) for r in ctl_rules),
              f"{what}: the controller only deletes slices")
        for kind in ("resourceslices", "resourceclaims-status", "leases"):
            name = f"mock-accel-node-agent-{kind}"
            check(("ValidatingAdmissionPolicy", name) in objs and ("ValidatingAdmissionPolicyBinding", name) in objs,
                  f"{what}: admission policy and binding {name}")
        leases_vap = objs.get(("ValidatingAdmissionPolicy", "mock-accel-node-agent-leases"), {"spec": {"validations": []}})
        check(any(f'"{merged["draDriver"]["name"]}-" + variables.userNodeName' in v["expression"]
                  for v in leases_vap["spec"]["validations"]), f"{what}: the agent's Lease name in the policy")
        # KMM.
        module = [d for _, d in docs if d["kind"] == "Module"]
        check(len(module) == int(bool(merged["kernelModule"]["enabled"])), f"{what}: KMM Module count")
        for m in module:
            walk(m, KMM_FIELDS, f"{what}: Module")
            check(isinstance(m["spec"]["selector"], dict) and m["spec"]["selector"], f"{what}: Module selector")
            maps = m["spec"]["moduleLoader"]["container"]["kernelMappings"]
            if vals.get("kernelModule", {}).get("kernelMappings"):
                check([(k["regexp"], k["containerImage"]) for k in maps] == [
                    ("^.*\\.fc43\\.x86_64$", "ghcr.io/fabiendupont/mock-accel-module:v1.0.0-fc43"),
                    ("^.*\\.fc44\\.x86_64$", "ghcr.io/fabiendupont/mock-accel-module:v1.0.0-fc44")],
                    f"{what}: kernelMappings {maps}")
            else:
                tag = merged["kernelModule"]["image"]["tag"] or "v1.0.0-${KERNEL_FULL_VERSION}"
                check(maps == [{"regexp": "^.+$", "containerImage": f"ghcr.io/fabiendupont/mock-accel-module:{tag}"}],
                      f"{what}: default kernelMappings {maps}")
            check(m["spec"]["selector"] == merged["kernelModule"]["nodeSelector"], f"{what}: Module selector")
        for _, d in docs:
            if d["kind"] == "ServiceMonitor":
                walk(d, SM_FIELDS, f"{what}: ServiceMonitor")
                check(d["metadata"]["labels"].get("release") == "kube-prometheus-stack", f"{what}: additionalLabels")
                svc = [s for _, s in docs if s["kind"] == "Service"]
                check(all(all(s["metadata"]["labels"].get(k) == v for k, v in d["spec"]["selector"]["matchLabels"].items())
                          for s in svc) and len(svc) == 2, f"{what}: ServiceMonitor selects both metrics Services")
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mock-device-dashboard-"):
                check(d["metadata"]["labels"].get("grafana_dashboard") == "1", f"{what}: dashboard label")
                for key, text in d["data"].items():
                    check(text == (ROOT / "dashboards" / key).read_text().rstrip("\n"), f"{what}: dashboard {key} shipped as is")
        if merged["global"]["imagePullSecrets"]:
            check(pod["imagePullSecrets"] == [{"name": "regcred"}], f"{what}: pull secrets")
        # helm test: a hook pod that lists the driver's slices, with the driver's image.
        tests = [d for _, d in docs if d["kind"] == "Pod"]
        check(len(tests) == 1 and tests[0]["metadata"]["annotations"]["helm.sh/hook"] == "test"
              and "--mode=check" in tests[0]["spec"]["containers"][0]["args"]
              and tests[0]["spec"]["containers"][0]["image"] == agent["image"], f"{what}: helm test pod")
        if what == "seed values file":
            expr = objs[("DeviceClass", "mock-accel-vf-2gb")]["spec"]["selectors"][0]["cel"]["expression"]
            check(expr == f'device.driver == "{DRIVER}" && (device.attributes["{DRIVER}"].deviceType == "vf")',
                  f"{what}: a custom class keeps the seed's CEL: {expr}")
        notes = raw.get("mock-device/templates/NOTES.txt", "")
        check(f"kubectl get resourceslices -l driver={DRIVER}" in notes, f"{what}: NOTES has the seed's verification")
        print(f"ok: {what}: {len(docs)} objects valid for {', '.join(K8S_VERSIONS)}")

    # Components and RBAC switched off: still valid, and what is off is gone.
    toggles = [
        (["rbac.create=false", "serviceAccount.create=false"], {"ClusterRole", "Role", "ServiceAccount",
                                                                "ValidatingAdmissionPolicy"}),
        (["draDriver.controller.enabled=false"], {"Deployment"}),
        (["draDriver.nodeAgent.enabled=false"], {"DaemonSet", "ValidatingAdmissionPolicy", "Pod"}),
        (["deviceClasses[0].enabled=false", "deviceClasses[1].enabled=false"], {"DeviceClass"}),
        (["metrics.service.enabled=false"], {"Service"}),
        (["resourceQuota.enabled=false"], {"ResourceQuota"}),
    ]
    for sets, gone in toggles:
        # --set on a list replaces it: keep the classes' other fields.
        vals = values_for(sets, [])
        if "deviceClasses" in vals:
            vals["deviceClasses"] = [dict(c, enabled=False) for c in chart.values["deviceClasses"]]
        docs, _ = render(chart, vals, "mock-device")
        validate_builtin(docs, f"toggle {sets}")
        # The helm-test hook's own ServiceAccount/Role/Pod is not the chart's.
        left = {d["kind"] for _, d in docs if "helm.sh/hook" not in d["metadata"].get("annotations", {})}
        check(not (left & gone), f"{sets}: still renders {sorted(left & gone)}")
        print(f"ok: {' '.join(sets)}: {len(docs)} objects, none of {sorted(gone)}")

    # devices.mode=sim: the sim's flags and state directory, no /sys, no
    # capability, the runtime's seccomp profile; refused beside KMM.
    docs, _ = render(chart, values_for(["devices.mode=sim", "devices.sim.pfs=8",
                                        "devices.sim.fabricAttachMs=5000"], []), "mock-device")
    validate_builtin(docs, "sim")
    pod = kinds(docs)[("DaemonSet", "mock-accel-node-agent")]["spec"]["template"]["spec"]
    agent = pod["containers"][0]
    check_args(agent["args"], {"NODE_NAME": "n", "POD_UID": "u", "POD_NAMESPACE": "ns"}, "sim: node agent")
    for flag in ["--devices=sim", "--sim-pfs=8", "--sim-numa-nodes=2", "--sim-max-vfs=8", "--sim-memory-mib=16384",
                 "--sim-fabric-attach-ms=5000"]:
        check(flag in agent["args"], f"sim: {flag} in {agent['args']}")
    check(not any(a.startswith("--ebpf") for a in agent["args"]), f"sim: no eBPF flag: {agent['args']}")
    paths = [v["hostPath"]["path"] for v in pod["volumes"]]
    check("/sys" not in paths and "/run/mock-accel-sim" in paths, f"sim: volumes {paths}")
    check({"name": "sim", "mountPath": "/run/mock-accel-sim"} in agent["volumeMounts"], f"sim: mounts {agent['volumeMounts']}")
    sc = agent["securityContext"]
    check(sc.get("privileged") is False and sc.get("allowPrivilegeEscalation") is False
          and sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"},
          f"sim: securityContext {sc}")
    check({"name": "SIM_DIR", "value": "/run/mock-accel-sim"} in agent["env"], f"sim: SIM_DIR for ctl: {agent['env']}")
    print(f"ok: devices.mode=sim: {len(docs)} objects, no /sys, no capability")
    try:
        render(chart, values_for(["devices.mode=sim", "kernelModule.enabled=true"], []), "mock-device")
        check(False, "devices.mode=sim with kernelModule.enabled=true rendered")
    except helm.HelmError as e:
        check("devices.mode=sim needs no kernel module" in str(e), f"sim + KMM: {e}")
        print("ok: devices.mode=sim with KMM refused, saying why")

    # DeviceScenarios (scenarios.enabled, on by default): the CRD (its CEL
    # compiled by the real API server in real_cluster's test), the agents'
    # and the controller's rights, the status policy, --scenarios. Off:
    # none of them, and the agent told so.
    docs, _ = render(chart, values_for([], []), "mock-device")
    k = kinds(docs)
    crd = k.get(("CustomResourceDefinition", "devicescenarios.mock-accel.example.com"))
    check(crd is not None and crd["spec"]["group"] == "mock-accel.example.com", "scenarios: the CRD in the driver's group")
    role = k[("ClusterRole", "mock-accel-node-agent")]
    check({"apiGroups": ["mock-accel.example.com"], "resources": ["devicescenarios/status"], "verbs": ["get", "patch"]}
          in role["rules"], f"scenarios: the agent may patch the status: {role['rules']}")
    check(("ValidatingAdmissionPolicy", "mock-accel-node-agent-devicescenarios-status") in k,
          "scenarios: the status policy")
    check(("Role", "mock-accel-node-agent-events") in k, "scenarios: the agent's Events role in default")
    agent = next(d for _, d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    check("--scenarios=true" in agent["args"], f"scenarios: --scenarios=true: {agent['args']}")
    docs, _ = render(chart, values_for(["scenarios.enabled=false"], []), "mock-device")
    k = kinds(docs)
    check(not any(kind == "CustomResourceDefinition" for kind, _ in k), "scenarios off: no CRD")
    check(not any("devicescenarios" in str(d) for _, d in docs if d["kind"] != "DaemonSet"),
          "scenarios off: no rights or policy for them")
    agent = next(d for _, d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    check("--scenarios=false" in agent["args"], f"scenarios off: --scenarios=false: {agent['args']}")
    docs, _ = render(chart, values_for(["kernelModule.enabled=true"], ['kernelModule.parameters=["max_vfs=16", "numa_nodes=4"]']),
                     "mock-device")
    crd = kinds(docs)[("CustomResourceDefinition", "devicescenarios.mock-accel.example.com")]
    pf = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["pfs"]["items"]
    rules = [r["rule"] for r in pf.get("x-kubernetes-validations", [])]
    check("!has(self.vfs) || self.vfs <= 16" in rules and "!has(self.numaNode) || self.numaNode < 4" in rules,
          f"scenarios: the KMM parameters' limits at admission: {rules}")
    print("ok: scenarios: CRD, rights, status policy and --scenarios; off: none; KMM parameters' limits")

    # devices.sharedKernel (many nodes on one kernel, issue 35): the agent's
    # flags (parsed by the real agent), the controller as root with /sys to
    # give back gone nodes' PFs; off: neither; refused with the sim or with
    # both a count and ids.
    for sets, want in [(["devices.sharedKernel.enabled=true", "devices.sharedKernel.pfsPerNode=4"],
                        ["--shared-kernel", "--take-pfs=4"]),
                       (["devices.sharedKernel.enabled=true", "devices.sharedKernel.pfIds={0,5}"],
                        ["--shared-kernel", "--take-pf-ids=0,5"])]:
        docs, _ = render(chart, values_for(sets, []), "mock-device")
        validate_builtin(docs, f"shared kernel {sets}")
        objs = kinds(docs)
        agent = objs[("DaemonSet", "mock-accel-node-agent")]["spec"]["template"]["spec"]["containers"][0]
        check(all(w in agent["args"] for w in want), f"shared kernel: agent args {agent['args']}")
        check_args(agent["args"], {"NODE_NAME": "n", "POD_UID": "u", "POD_NAMESPACE": "ns"}, "shared kernel: node agent")
        ctl = objs[("Deployment", "mock-accel-controller")]["spec"]["template"]["spec"]
        check("--shared-kernel" in ctl["containers"][0]["args"], f"shared kernel: controller args {ctl['containers'][0]['args']}")
        check_args(ctl["containers"][0]["args"], {"POD_NAME": "p", "POD_NAMESPACE": "ns"}, "shared kernel: controller")
        check(ctl["securityContext"].get("runAsUser") == 0 and {"name": "sys", "mountPath": "/sys"} in ctl["containers"][0]["volumeMounts"],
              f"shared kernel: the controller as root with /sys: {ctl['securityContext']}")
    docs, _ = render(chart, values_for([], []), "mock-device")
    objs = kinds(docs)
    ctl = objs[("Deployment", "mock-accel-controller")]["spec"]["template"]["spec"]
    check(ctl["securityContext"].get("runAsUser") == 65532 and "volumes" not in ctl
          and not any("shared-kernel" in a for a in objs[("DaemonSet", "mock-accel-node-agent")]["spec"]["template"]["spec"]["containers"][0]["args"]),
          "shared kernel off: the controller non-root without /sys, no --shared-kernel")
    refused(chart, [(["devices.sharedKernel.enabled=true", "devices.mode=sim"], "devices.sharedKernel.enabled"),
                    (["devices.sharedKernel.pfsPerNode=2", "devices.sharedKernel.pfIds={1}"], "exclude each other")])
    print("ok: devices.sharedKernel: the agent's and the controller's flags, the controller's rights; off: none; refused with the sim")

    # kernelModule.loader (no KMM, issue 35): the agent's init container
    # with the loader image (every kernel's build: v<appVersion>), the
    # parameters, CAP_SYS_MODULE only, the node's /lib/modules and /usr/src
    # read-only; off: no init container; refused beside KMM or the sim.
    docs, _ = render(chart, values_for(["kernelModule.loader.enabled=true"],
                                       ['kernelModule.parameters=["num_pfs=3", "max_vfs=16"]']), "mock-device")
    validate_builtin(docs, "loader")
    pod = kinds(docs)[("DaemonSet", "mock-accel-node-agent")]["spec"]["template"]["spec"]
    init = pod.get("initContainers", [{}])[0]
    check(init.get("name") == "load-module" and init["image"].startswith("ghcr.io/fabiendupont/mock-accel-module:v")
          and init["command"] == ["/usr/bin/mock-accel-load"] and init["args"] == ["num_pfs=3", "max_vfs=16"],
          f"loader: the init container {init}")
    sc = init.get("securityContext", {})
    check(sc.get("capabilities") == {"drop": ["ALL"], "add": ["SYS_MODULE"]} and sc.get("privileged") is False
          and sc.get("readOnlyRootFilesystem") is True, f"loader: CAP_SYS_MODULE only: {sc}")
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in init.get("volumeMounts", [])}
    check(mounts == {"/sys": True, "/lib/modules": True, "/usr/src": True, "/tmp": False}, f"loader: mounts {mounts}")
    check(init.get("terminationMessagePolicy") == "FallbackToLogsOnError", "loader: its log is the pod's termination message")
    docs, _ = render(chart, values_for([], []), "mock-device")
    pod = kinds(docs)[("DaemonSet", "mock-accel-node-agent")]["spec"]["template"]["spec"]
    check("initContainers" not in pod and not any(v["name"] == "modules" for v in pod["volumes"]),
          "loader off: no init container, no /lib/modules")
    refused(chart, [(["kernelModule.loader.enabled=true", "kernelModule.enabled=true"], "choose one"),
                    (["kernelModule.loader.enabled=true", "devices.mode=sim"], "needs no kernel module")])
    print("ok: kernelModule.loader: the init container, its rights and mounts; off: none; refused beside KMM or the sim")

    # fleet (--mode=fleet, issue 36): a Deployment of one, its own
    # ServiceAccount and rights (slices of any node, not the node agent's
    # admission policy), the sim's settings; off: nothing.
    docs, _ = render(chart, values_for(["fleet.enabled=true", "fleet.vfsPerPf=8", "devices.sim.pfs=2"], []),
                     "mock-device")
    validate_builtin(docs, "fleet")
    objs = kinds(docs)
    dep = objs[("Deployment", "mock-accel-fleet")]
    fargs = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    for want in ("--mode=fleet", "--devices=sim", "--fleet-node-selector=type=kwok", "--fleet-vfs=8",
                 "--sim-pfs=2", "--fleet-max-nodes=1000", "--heartbeat-interval=10s"):
        check(want in fargs, f"fleet: {want} in {fargs}")
    check(dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate",
          "fleet: one replica, never two at once")
    check(dep["spec"]["template"]["spec"]["serviceAccountName"] == "mock-accel-fleet", "fleet: its own ServiceAccount")
    check_args(fargs, {"POD_NAMESPACE": "ns"}, "fleet")
    frules = objs[("ClusterRole", "mock-accel-fleet")]["rules"]
    check(any("resourceslices" in r["resources"] and {"create", "update", "delete"} <= set(r["verbs"]) for r in frules),
          "fleet: writes slices")
    check(not any(k == "ValidatingAdmissionPolicyBinding" and "fleet" in n for k, n in objs),
          "fleet: no per-node admission policy (it serves many nodes)")
    docs, _ = render(chart, values_for([], []), "mock-device")
    check(not any(d["metadata"]["name"].startswith("mock-accel-fleet") for _, d in docs), "fleet off: nothing of it")
    refused(chart, [(["fleet.enabled=true", "fleet.nodeSelector="], "fleet.nodeSelector"),
                    (["fleet.enabled=true", "fleet.vfsPerPf=9"], "above devices.sim.maxVfs")])
    print("ok: fleet: the Deployment of one, its flags (parsed by the agent), its rights; off: none; refused without a selector")

    # The schema refuses mistakes, with a message naming them.
    bad = [
        ("fleet max nodes 0", ["fleet.maxNodes=0"], "maxNodes"),
        ("a fleet selector with a quote", ["fleet.nodeSelector=a\"b"], "nodeSelector"),
        ("a misspelt key", ["draDriver.controler.enabled=false"], "controler"),
        ("verbosity 11", ["draDriver.nodeAgent.verbosity=11"], "verbosity"),
        ("a pull policy", ["draDriver.controller.image.pullPolicy=Sometimes"], "pullPolicy"),
        ("a duration", ["draDriver.controller.rescanInterval=soon"], "rescanInterval"),
        ("a fractional duration (the agent cannot parse it)", ["draDriver.nodeAgent.heartbeatInterval=1.5s"],
         "heartbeatInterval"),
        ("a driver name", ["draDriver.name=Not_A_Domain"], "name"),
        ("a device type", ["deviceClasses[0].deviceType=gpu"], "deviceType"),
        ("a taint effect", ["draDriver.nodeAgent.healthTaints=PreferNoSchedule"], "healthTaints"),
        ("consumable capacity not a boolean", ["draDriver.nodeAgent.consumableCapacity=yes"], "consumableCapacity"),
        ("list attributes not a boolean", ["draDriver.nodeAgent.listAttributes=yes"], "listAttributes"),
        ("a negative host memory overhead", ["draDriver.nodeAgent.hostMemoryOverheadMiB=-1"], "hostMemoryOverheadMiB"),
        ("device metadata not a boolean", ["draDriver.nodeAgent.deviceMetadata=1"], "deviceMetadata"),
        ("compatibility groups not a boolean", ["draDriver.nodeAgent.compatibilityGroups=on"], "compatibilityGroups"),
        ("an extended resource without a domain", ["deviceClasses[0].extendedResourceName=accel"],
         "extendedResourceName"),
        ("an extended resource in kubernetes.io", ["deviceClasses[1].extendedResourceName=kubernetes.io/accel"],
         "extendedResourceName"),
        ("a module parameter without a value", ["kernelModule.parameters={fabric_attach_ms}"], "parameters"),
        ("a device mode", ["devices.mode=gpu"], "mode"),
        ("sim VFs above the module's 64", ["devices.sim.maxVfs=65"], "maxVfs"),
        ("a relative sim state directory", ["devices.sim.stateDir=run/sim"], "stateDir"),
        ("a PF id above 63", ["devices.sharedKernel.pfIds={64}"], "pfIds"),
        ("PFs per node above 64", ["devices.sharedKernel.pfsPerNode=65"], "pfsPerNode"),
    ]
    for what, sets, word in bad:
        try:
            chart.validate_schema(values_for(sets, []))
            check(False, f"schema accepted {what}")
        except helm.HelmError as e:
            check(word in str(e), f"schema error for {what} names it: {e}")
            print(f"ok: schema refuses {what}: {' '.join(str(e).split())[:160]}")
    try:
        chart.validate_schema(values_for([], ['kernelModule.kernelMappings=[{"containerImage":"x"}]']))
        check(False, "schema accepted a kernel mapping without regexp or literal")
    except helm.HelmError as e:
        print(f"ok: schema refuses a kernel mapping without regexp/literal: {' '.join(str(e).split())[:160]}")

    # Dashboards: one source (dashboards/), the chart's copy identical.
    for f in sorted((ROOT / "dashboards").glob("*.json")):
        shipped = CHART / "dashboards" / f.name
        check(shipped.is_file() and shipped.read_bytes() == f.read_bytes(),
              f"chart/dashboards/{f.name} differs from dashboards/{f.name}: run `just dashboards-sync`")
        d = json.loads(f.read_text())
        check(bool(d.get("uid")), f"{f.name}: fixed uid")
        vars_ = {v["name"]: v for v in d["templating"]["list"]}
        check(vars_.get("datasource", {}).get("type") == "datasource", f"{f.name}: ${{datasource}} variable")
        for p in d["panels"]:
            for ds in [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]:
                check(ds == {"type": "prometheus", "uid": "${datasource}"}, f"{f.name}: panel {p['title']}: datasource {ds}")
    check(sorted(p.name for p in (CHART / "dashboards").glob("*.json")) ==
          sorted(p.name for p in (ROOT / "dashboards").glob("*.json")), "the same dashboard files")

    # The objects the README tells users to apply are valid too.
    readme = (CHART / "README.md").read_text()
    blocks = [b.split("\nEOF", 1)[0] for b in readme.split("kubectl apply -f -\n")[1:]]
    check(len(blocks) == 2, f"README example objects: {len(blocks)}")
    for b in blocks:
        d = yaml.safe_load(b)
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except Exception as e:
                check(False, f"README example {d.get('kind')} invalid for {v}: {e}")
    print(f"ok: the README's {len(blocks)} example objects are valid")

    if failures:
        print(f"\n{len(failures)} failure(s)")
        return 1
    print("\nchart: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
