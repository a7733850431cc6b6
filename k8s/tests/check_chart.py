"""Offline checks of the rooms Helm chart (run through k8s/check.sh).

Renders the chart, validates every manifest against the Kubernetes schemas,
checks that values.schema.json refuses bad values, and runs the real
gateway/roomhost binaries with the rendered arguments (--check-config).
Exits non-zero on the first failure, saying what failed.
"""

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "k8s", "rooms")
PRODUCTION = os.path.join(ROOT, "k8s", "values-production.yaml")
CLASSES = os.path.join(ROOT, "k8s", "tests", "values-classes.yaml")
BAD = os.path.join(ROOT, "k8s", "tests", "bad-values.yaml")
LOCAL_CLUSTER = os.path.join(ROOT, "deploy", "local-cluster.sh")
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
# Kinds from CRDs the schema bundle does not know; checked by hand below.
CRD_KINDS = {"ServiceMonitor"}

# Flags that differ on purpose between the chart and deploy/local-cluster.sh:
# security settings of a development cluster, and what Kubernetes injects.
CHART_ONLY = {
    "gateway": {"jwt-algorithm", "jwt-public-key", "jwt-issuer", "jwt-audience",
                "allowed-origins", "jwt-secret", "admin-token"},
    "roomhost": set(),
}
# Environment variables the chart sets, as the flags they stand for.
ENV_FLAGS = {"ROOMHOST_REDIS": "redis", "GATEWAY_JWT_SECRET": "jwt-secret",
             "GATEWAY_ADMIN_TOKEN": "admin-token"}

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def ok(message):
    print(f"ok   {message}")


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def render(helm, values, kube_version, *extra):
    cmd = [helm, "template", "rooms", CHART, "--namespace", "chat",
           "--kube-version", kube_version]
    if values:
        cmd += ["-f", values]
    return run(cmd + list(extra))


def lint(helm, values):
    cmd = [helm, "lint", "--strict", CHART]
    if values:
        cmd += ["-f", values]
    result = run(cmd)
    name = os.path.basename(values) if values else "default values"
    if result.returncode == 0:
        ok(f"helm lint --strict ({name})")
    else:
        fail(f"helm lint ({name}):\n{result.stdout}{result.stderr}")


def validate(validator, docs, label, kube_version):
    known = [d for d in docs if d["kind"] not in CRD_KINDS]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(known, f)
        path = f.name
    result = run([validator, "--strict", "--quiet", "-k", kube_version, path])
    os.unlink(path)
    if result.returncode == 0:
        ok(f"{label}: {len(known)} manifests valid for Kubernetes {kube_version} (strict)")
    else:
        fail(f"{label}: kubernetes-validate {kube_version}:\n{result.stdout}{result.stderr}")
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, docs, label)


def check_service_monitor(monitor, docs, label):
    """The ServiceMonitor's ports must exist on the Services it selects."""
    spec = monitor.get("spec", {})
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1" or not spec.get("endpoints"):
        return fail(f"{label}: malformed ServiceMonitor {monitor}")
    service_ports = {p["name"] for d in docs if d["kind"] == "Service"
                     for p in d["spec"].get("ports", [])}
    for endpoint in spec["endpoints"]:
        if endpoint["port"] not in service_ports:
            fail(f"{label}: ServiceMonitor port {endpoint['port']} is on no Service")
    ok(f"{label}: ServiceMonitor endpoints name Service ports")


def workloads(docs):
    """(component, container, pod spec) of the gateway and roomhost workloads."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                if container["name"] in ("gateway", "roomhost"):
                    yield container["name"], container, pod


def placeholder_env(container):
    """The container's environment as the check runs it: literal values
    kept, Secret and field references replaced by plausible stand-ins."""
    env = {}
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[name] = "10.1.2.3"
        elif name == "ROOMHOST_REDIS":
            env[name] = "redis://:password@redis.example:6379/0"
        else:
            env[name] = "s3cret-" + "x" * 40
    return env


def expand(arg, env):
    """Kubernetes' $(VAR) expansion in args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def public_key(directory, algorithm):
    """A PEM public key for the algorithm, at directory/NAME, made with openssl."""
    key = os.path.join(directory, "private.pem")
    if algorithm == "ES256":
        gen = ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key]
    else:
        gen = ["openssl", "genrsa", "-out", key, "2048"]
    subprocess.run(gen, check=True, capture_output=True)
    pem = run(["openssl", "pkey", "-in", key, "-pubout"]).stdout
    return pem


def flag_name(arg):
    return arg[2:].split("=", 1)[0] if arg.startswith("--") else None


def mounted_files(docs, pod, volume_name):
    """The files a volume of `pod` holds, when the chart renders its source."""
    volume = next((v for v in pod.get("volumes", []) if v["name"] == volume_name), {})
    if "configMap" in volume:
        kind, name = "ConfigMap", volume["configMap"]["name"]
    elif "secret" in volume:
        kind, name = "Secret", volume["secret"]["secretName"]
    else:
        return {}
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            files = dict(doc.get("data") or {})
            if kind == "Secret":
                files = {k: base64.b64decode(v).decode() for k, v in files.items()}
                files.update(doc.get("stringData") or {})
            return files
    return {}


def local_arguments(docs, container, pod, env, scratch):
    """The container's arguments, its mounted files made real under `scratch`:
    what ConfigMaps and Secrets the chart renders hold, or else a public key."""
    args = [expand(a, env) for a in container["args"]]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    for mount_path, volume in mounts.items():
        local = os.path.join(scratch, mount_path.strip("/").replace("/", "_"))
        os.makedirs(local)
        files = mounted_files(docs, pod, volume)
        for name, content in files.items():
            with open(os.path.join(local, name), "w") as f:
                f.write(content)
        for i, arg in enumerate(args):
            if files and mount_path + "/" in arg:
                args[i] = arg.replace(mount_path + "/", local + "/")
            elif "=" in arg and arg.split("=", 1)[1].startswith(mount_path + "/"):
                flag, path = arg.split("=", 1)
                target = os.path.join(local, os.path.relpath(path, mount_path))
                algorithm = next((a.split("=", 1)[1] for a in args
                                  if a.startswith("--jwt-algorithm=")), "RS256")
                with open(target, "w") as f:
                    f.write(public_key(scratch, algorithm))
                args[i] = f"{flag}={target}"
    return args


def check_arguments(docs, label, bin_dir):
    for component, container, pod in workloads(docs):
        binary = os.path.join(bin_dir, os.path.basename(container["command"][0]))
        if not os.path.exists(binary):
            fail(f"{binary} is missing: build the binaries first")
            continue
        env = placeholder_env(container)
        with tempfile.TemporaryDirectory() as scratch:
            args = local_arguments(docs, container, pod, env, scratch)
            clean_env = {"PATH": os.environ.get("PATH", ""), **env}
            result = run([binary, "--check-config", *args], env=clean_env)
            if result.returncode == 0:
                ok(f"{label}: {component} accepts its {len(args)} rendered arguments")
            else:
                fail(f"{label}: {component} refuses its rendered arguments {args}:\n"
                     f"{result.stdout}{result.stderr}")
            # The check itself can fail: an unknown flag is refused.
            control = run([binary, "--check-config", *args, "--no-such-flag"], env=clean_env)
            if control.returncode == 0:
                fail(f"{label}: {component} accepted --no-such-flag; the check proves nothing")
        check_ports(component, container, pod, args, label)


def check_broken_bundle(helm, bin_dir):
    """A bundle with a syntax error: the roomhost's --check-config on what the
    chart mounts refuses it, naming the file and line."""
    broken = "export class Echo {\n  webSocketMessage(ws, m) { ws.send( }\n}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".js") as source:
        source.write(broken)
        source.flush()
        result = render(helm, CLASSES, KUBE_VERSIONS[-1],
                         "--set-file", f"roomClasses.bundles.echo\\.js={source.name}")
    if result.returncode != 0:
        return fail(f"helm template with a broken bundle failed:\n{result.stderr}")
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for component, container, pod in workloads(docs):
        if component != "roomhost":
            continue
        env = placeholder_env(container)
        with tempfile.TemporaryDirectory() as scratch:
            args = local_arguments(docs, container, pod, env, scratch)
            binary = os.path.join(bin_dir, "roomhost")
            result = run([binary, "--check-config", *args],
                         env={"PATH": os.environ.get("PATH", ""), **env})
        output = result.stdout + result.stderr
        if result.returncode != 0 and re.search(r"echo\.js:2", output):
            ok("a bundle with a syntax error fails --check-config, naming echo.js line 2")
        else:
            fail(f"a broken bundle was not refused with its file and line:\n{output}")


def check_ports(component, container, pod, args, label):
    """Named container ports match the listen flags; probes use them."""
    flags = {flag_name(a): a.split("=", 1)[1] for a in args if "=" in a}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"gateway": {"http": "listen", "admin": "admin-listen"},
                "roomhost": {"grpc": "listen", "metrics": "metrics-listen"}}[component]
    for port_name, flag in expected.items():
        listen = flags.get(flag, "")
        if not listen.endswith(f":{ports.get(port_name)}"):
            fail(f"{label}: {component} port {port_name}={ports.get(port_name)} but --{flag}={listen}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ports:
            fail(f"{label}: {component} {probe} is {get}, expected {path} on a named port")
    grace = flags.get("shutdown-grace", "0s")
    seconds = int(re.match(r"(\d+)", grace).group(1)) * (60 if grace.endswith("m") else 1)
    if pod.get("terminationGracePeriodSeconds", 30) <= seconds:
        fail(f"{label}: {component} terminationGracePeriodSeconds "
             f"{pod.get('terminationGracePeriodSeconds')} <= --shutdown-grace {grace}")
    ok(f"{label}: {component} ports, probes and termination grace agree with its flags")


def check_local_cluster(docs):
    """deploy/local-cluster.sh starts each binary with the chart's flags."""
    script = open(LOCAL_CLUSTER).read()
    for component, container, _ in workloads(docs):
        chart = {flag_name(a) for a in container["args"]} - {None}
        chart |= {ENV_FLAGS[v["name"]] for v in container.get("env", []) if v["name"] in ENV_FLAGS}
        start = script.index(f'"$BIN/{component}" --')
        command = script[start:script.index("\n  done", start)]
        local = set(re.findall(r"--([a-z][a-z-]+)=", command))
        missing = chart - local - CHART_ONLY[component]
        extra = local - chart - CHART_ONLY[component]
        if missing or extra:
            fail(f"local-cluster.sh {component}: chart-only flags {sorted(missing)}, "
                 f"local-only flags {sorted(extra)}")
        else:
            ok(f"local-cluster.sh starts {component} with the chart's {len(chart)} flags")


def check_bad_values(helm):
    result = render(helm, BAD, KUBE_VERSIONS[-1])
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return fail("values.schema.json accepted k8s/tests/bad-values.yaml")
    if "values don't meet the specifications of the schema" not in output:
        return fail(f"bad values refused, but not by the schema:\n{output}")
    # Each wrong value is named in the error.
    for needle in ("auth.mode", "gateway.replicas", "gateway.shutdownGrace", "gateway.workerThreads",
                   "roomhost.historyLimit", "roomhost.leaseTtl", "redis.url", "replicas",
                   "roomClasses.classes.0.bundle", "roomClasses.classes.0.class"):
        if needle not in output:
            fail(f"the schema error does not mention {needle}:\n{output}")
    ok("values.schema.json refuses bad-values.yaml, naming every bad value")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--helm", required=True)
    parser.add_argument("--validate", required=True)
    parser.add_argument("--bin-dir", required=True)
    opts = parser.parse_args()

    json.load(open(os.path.join(CHART, "dashboards", "rooms.json")))
    ok("dashboards/rooms.json is valid JSON")
    for values in (None, PRODUCTION):
        lint(opts.helm, values)
    rendered = {}
    for values, label in ((None, "default"), (PRODUCTION, "production"), (CLASSES, "classes")):
        for kube_version in KUBE_VERSIONS:
            result = render(opts.helm, values, kube_version)
            if result.returncode != 0:
                fail(f"{label}: helm template failed:\n{result.stderr}")
                continue
            docs = [d for d in yaml.safe_load_all(result.stdout) if d]
            rendered[label] = docs
            validate(opts.validate, docs, label, kube_version)
    for label, docs in rendered.items():
        check_arguments(docs, label, opts.bin_dir)
    if "production" in rendered:
        kinds = sorted({d["kind"] for d in rendered["production"]})
        for kind in ("Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"):
            if kind not in kinds:
                fail(f"production render lacks a {kind}: {kinds}")
    if "default" in rendered:
        check_local_cluster(rendered["default"])
    check_bad_values(opts.helm)
    check_broken_bundle(opts.helm, opts.bin_dir)
    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        sys.exit(1)
    print("\nchart checks passed")


if __name__ == "__main__":
    main()
