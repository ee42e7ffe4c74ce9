"""Lint, render and check the Helm chart in helm/rollcall. scripts/check-helm runs this.

Helm comes from helm-python-sdk, which wraps Helm's own Go SDK, and the Kubernetes schemas
from kubernetes-validate, so the check needs no cluster and no network. It fails when Helm's
strict lint reports a warning or an error, when a rendered manifest breaks a Kubernetes
schema or a property the chart promises, or when a bad value is not rejected by name.
"""

import argparse
import copy
import pathlib
import sys
import time

import helm_python as helm
import kubernetes_validate
import yaml

# The oldest Kubernetes release the chart supports (Chart.yaml's kubeVersion) and the newest
# that kubernetes-validate has schemas for.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
RELEASE = "rollcall"
NAMESPACE = "schools"
SERVICES = ("registers", "policy", "cases", "referrals", "mis-adapter")
# Helm's lint severities: 1 info, 2 warning, 3 error. Strict lint fails on a warning.
WARNING = 2
HOOK_ANNOTATIONS = {
    "helm.sh/hook": "pre-install,pre-upgrade",
    "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
}
# The folder and file name of the database server's CA that database.tls.enabled mounts. The
# URL in the database Secret names the file by this path, so it must not move.
DATABASE_CA_DIR = "/etc/rollcall/db-ca"
DATABASE_CA_FILE = "ca.crt"
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)

# Values that must be rejected, each with the text the error must contain to name the value.
# Both lint and rendering report the schema's errors. The templates' own checks (`fail`) are
# reported by rendering only, because Helm's lint logs a `fail` and carries on. `helm install`
# and `helm template` render the chart, so they reject these values too.
SCHEMA, TEMPLATE = "schema", "template"
BAD_VALUES = [
    (
        SCHEMA,
        "negative replicas",
        {"services": {"registers": {"replicas": -1}}},
        "/services/registers/replicas",
    ),
    (SCHEMA, "gRPC port out of range", {"ports": {"grpc": 70000}}, "/ports/grpc"),
    (SCHEMA, "health port out of range", {"ports": {"health": 0}}, "/ports/health"),
    (SCHEMA, "unknown top-level key", {"replicaCount": 3}, "'replicaCount'"),
    (
        SCHEMA,
        "empty database Secret name",
        {"database": {"existingSecret": ""}},
        "/database/existingSecret",
    ),
    (
        SCHEMA,
        "database Secret name with capitals",
        {"database": {"existingSecret": "Rollcall-DB"}},
        "/database/existingSecret",
    ),
    (
        SCHEMA,
        "empty signing key Secret name",
        {"signingKey": {"existingSecret": ""}},
        "/signingKey/existingSecret",
    ),
    (SCHEMA, "empty token settings", {"settings": {"auth": ""}}, "/settings/auth"),
    (SCHEMA, "root user", {"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
    (SCHEMA, "unknown log format", {"logFormat": "xml"}, "/logFormat"),
    (
        SCHEMA,
        "no requests in flight allowed",
        {"limits": {"maxConcurrentRequests": 0}},
        "/limits/maxConcurrentRequests",
    ),
    (
        SCHEMA,
        "message limit under 4 MiB",
        {"limits": {"maxMessageBytes": 1000}},
        "/limits/maxMessageBytes",
    ),
    (
        SCHEMA,
        "resources without limits",
        {"services": {"cases": {"resources": {"limits": None}}}},
        "/services/cases/resources",
    ),
    (
        SCHEMA,
        "memory request not a quantity",
        {"services": {"policy": {"resources": {"requests": {"memory": "lots"}}}}},
        "/services/policy/resources/requests/memory",
    ),
    (
        SCHEMA,
        "secret mounted into an unknown service",
        {
            "secretMounts": [
                {
                    "name": "smtp",
                    "secretName": "rollcall-smtp",
                    "mountPath": "/etc/rollcall/secrets/smtp",
                    "services": ["mailer"],
                }
            ]
        },
        "/secretMounts/0/services/0",
    ),
    (
        SCHEMA,
        "cert-manager without an issuer",
        {"tls": {"certManager": {"enabled": True}}},
        "/tls/certManager/issuerRef/name",
    ),
    (
        SCHEMA,
        "database CA Secret name with capitals",
        {"database": {"tls": {"enabled": True, "caSecretName": "Postgres-CA"}}},
        "/database/tls/caSecretName",
    ),
    (
        SCHEMA,
        "empty database CA key",
        {"database": {"tls": {"enabled": True, "caSecretName": "postgres-ca", "caKey": ""}}},
        "/database/tls/caKey",
    ),
    (
        SCHEMA,
        "database TLS switch not a boolean",
        {"database": {"tls": {"enabled": "yes"}}},
        "/database/tls/enabled",
    ),
    (
        TEMPLATE,
        "database TLS with an empty CA Secret name",
        {"database": {"tls": {"enabled": True, "caSecretName": ""}}},
        "database.tls.caSecretName",
    ),
    (
        TEMPLATE,
        "database CA from both a Secret and a ConfigMap",
        {
            "database": {
                "tls": {
                    "enabled": True,
                    "caSecretName": "postgres-ca",
                    "caConfigMapName": "postgres-ca",
                }
            }
        },
        "database.tls.caConfigMapName",
    ),
    (
        TEMPLATE,
        "database CA named with database TLS off",
        {"database": {"tls": {"enabled": False, "caConfigMapName": "postgres-ca"}}},
        "database.tls.caConfigMapName",
    ),
    (
        TEMPLATE,
        "autoscaler minimum above maximum",
        {"services": {"policy": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}}},
        "services.policy.autoscaling.minReplicas",
    ),
    (
        TEMPLATE,
        "NetworkPolicy without PostgreSQL addresses",
        {"networkPolicy": {"enabled": True}},
        "networkPolicy.postgres.cidrs",
    ),
    (
        TEMPLATE,
        "NetworkPolicy without the OTLP collector",
        {
            "otlp": {"endpoint": "http://collector:4317"},
            "networkPolicy": {"enabled": True, "postgres": {"cidrs": ["192.0.2.10/32"]}},
        },
        "networkPolicy.otlp",
    ),
    (TEMPLATE, "health port equal to the gRPC port", {"ports": {"health": 50051}}, "ports.health"),
    (
        TEMPLATE,
        "grace period shorter than the drain",
        {"terminationGracePeriodSeconds": 10},
        "terminationGracePeriodSeconds",
    ),
]


class Failures:
    """Collects failed checks, so that one run reports all of them."""

    def __init__(self):
        self.messages = []

    def check(self, condition, message):
        if not condition:
            self.messages.append(message)


def merge(base, overrides):
    """Return base with overrides merged in, as Helm merges values files: maps key by key,
    and None removes a key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def lint(chart, values, kube_version):
    """Run Helm's strict lint and return its messages of warning severity or worse."""
    report = helm.lint(str(chart), values, strict=True, kube_version=f"v{kube_version}")
    found = [m for m in report["messages"] if m["severity"] >= WARNING]
    # Strict lint also lists each such finding as an error. The errors are kept when no message
    # matched, so that no finding is lost.
    if not found:
        found = [{"severity": 3, "path": "", "error": error} for error in report["errors"]]
    return found


def render(chart, values):
    """Render the chart as `helm template` does for a first install, and return the notes
    and the manifests as dicts."""
    with helm.Chart.load(str(chart)) as loaded:
        files = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = ""
    manifests = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document["__source__"] = path
                manifests.append(document)
    return notes, manifests


def name_of(manifest):
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def validate_schemas(manifests, failures):
    """Validate every manifest against the Kubernetes schemas, strictly, so that an unknown
    field fails too. kubernetes-validate has no schema for cert-manager's Certificate, so its
    required fields are checked here."""
    for manifest in manifests:
        body = {k: v for k, v in manifest.items() if k != "__source__"}
        if body["kind"] == "Certificate":
            spec = body.get("spec", {})
            for field in ("secretName", "dnsNames", "issuerRef", "usages"):
                failures.check(field in spec, f"{name_of(body)}: spec.{field} is missing")
            failures.check(
                body["apiVersion"] == "cert-manager.io/v1",
                f"{name_of(body)}: apiVersion is {body['apiVersion']}, not cert-manager.io/v1",
            )
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                failures.check(
                    False,
                    f"{name_of(body)} ({manifest['__source__']}) is invalid "
                    f"for Kubernetes {version} at {path or 'the top'}: {error.message}",
                )
            except kubernetes_validate.SchemaNotFoundError as error:
                failures.check(False, f"{name_of(body)}: no Kubernetes {version} schema: {error}")


def pod_specs(manifests):
    """Return (owner name, pod spec) for every Deployment and Job."""
    return [
        (name_of(m), m["spec"]["template"]["spec"])
        for m in manifests
        if m["kind"] in ("Deployment", "Job")
    ]


def check_pod(owner, spec, failures):
    context = spec.get("securityContext", {})
    failures.check(context.get("runAsNonRoot") is True, f"{owner}: pod runAsNonRoot is not true")
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        value = context.get(field)
        failures.check(
            isinstance(value, int) and value > 0,
            f"{owner}: pod {field} is {value!r}, expected a number above 0",
        )
    failures.check(
        context.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{owner}: pod seccompProfile is not RuntimeDefault",
    )
    failures.check(
        spec.get("automountServiceAccountToken") is False,
        f"{owner}: automountServiceAccountToken is not false",
    )
    tmp = [v for v in spec.get("volumes", []) if v["name"] == "tmp"]
    failures.check(len(tmp) == 1 and "emptyDir" in tmp[0], f"{owner}: no emptyDir volume named tmp")

    for container in spec.get("initContainers", []) + spec["containers"]:
        where = f"{owner} container {container['name']}"
        context = container.get("securityContext", {})
        failures.check(context.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not true")
        failures.check(
            context.get("readOnlyRootFilesystem") is True,
            f"{where}: readOnlyRootFilesystem is not true",
        )
        failures.check(
            context.get("allowPrivilegeEscalation") is False,
            f"{where}: allowPrivilegeEscalation is not false",
        )
        failures.check(
            context.get("capabilities", {}).get("drop") == ["ALL"],
            f"{where}: capabilities.drop is not [ALL]",
        )
        failures.check(
            context.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{where}: seccompProfile is not RuntimeDefault",
        )
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                failures.check(
                    resource in resources.get(kind, {}),
                    f"{where}: resources.{kind}.{resource} is missing",
                )
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        failures.check(
            mounts.get("/tmp") == "tmp", f"{where}: the tmp volume is not mounted at /tmp"
        )
        for variable in container.get("env", []):
            value = str(variable.get("value", ""))
            failures.check(
                "postgres://" not in value and "postgresql://" not in value,
                f"{where}: {variable['name']} contains a database URL in plain text",
            )
        database = [v for v in container.get("env", []) if v["name"] == "ROLLCALL_DATABASE_URL"]
        failures.check(
            len(database) == 1 and "secretKeyRef" in database[0].get("valueFrom", {}),
            f"{where}: ROLLCALL_DATABASE_URL does not come from a Secret",
        )


def check_database_ca(owner, spec, values, failures):
    """With database.tls.enabled, check that every container mounts the database server's CA
    read-only at DATABASE_CA_DIR, as DATABASE_CA_FILE, from the Secret or ConfigMap the values
    name. Without it, check that nothing is mounted there."""
    tls = values["database"]["tls"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for container in spec["containers"]:
        where = f"{owner} container {container['name']}"
        mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"] == DATABASE_CA_DIR]
        if not tls["enabled"]:
            failures.check(
                not mounts,
                f"{where}: mounts {DATABASE_CA_DIR} although database.tls.enabled is false",
            )
            continue
        if len(mounts) != 1:
            failures.check(
                False,
                f"{where}: {len(mounts)} volumes are mounted at {DATABASE_CA_DIR}, expected "
                "the database CA alone",
            )
            continue
        mount = mounts[0]
        failures.check(
            mount.get("readOnly") is True, f"{where}: the database CA is not mounted read-only"
        )
        failures.check(
            "subPath" not in mount,
            f"{where}: the database CA is mounted with a subPath, which kubelet never updates",
        )
        volume = volumes.get(mount["name"], {})
        if tls["caSecretName"]:
            kind, expected = "Secret", tls["caSecretName"]
            source = volume.get("secret", {})
            found = source.get("secretName")
        else:
            kind, expected = "ConfigMap", tls["caConfigMapName"]
            source = volume.get("configMap", {})
            found = source.get("name")
        failures.check(
            found == expected,
            f"{where}: the database CA volume {mount['name']!r} is not {kind} {expected!r}",
        )
        expected_items = [{"key": tls["caKey"], "path": DATABASE_CA_FILE}]
        failures.check(
            source.get("items") == expected_items,
            f"{where}: the database CA volume's items are {source.get('items')!r}, "
            f"expected {expected_items!r}",
        )

    if not tls["enabled"]:
        failures.check(
            "db-ca" not in volumes,
            f"{owner}: has a db-ca volume although database.tls.enabled is false",
        )


def argument(args, flag):
    """Return the value that follows a flag in a container's arguments, or None."""
    return args[args.index(flag) + 1] if flag in args else None


def check_deployment(deployment, values, failures):
    owner = name_of(deployment)
    component = deployment["metadata"]["labels"].get("app.kubernetes.io/component")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = container["args"]
    health = values["ports"]["health"]

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = container.get(probe, {}).get("grpc", {}).get("port")
        failures.check(
            isinstance(port, int) and port == health,
            f"{owner}: {probe} is not a gRPC probe on the numeric health port {health} "
            f"(found {port!r})",
        )
    expected_only = "registers,audit" if component == "registers" else component
    failures.check(args[:1] == ["serve"], f"{owner}: the first argument is not serve")
    failures.check(
        argument(args, "--only") == expected_only,
        f"{owner}: --only is {argument(args, '--only')!r}, expected {expected_only!r}",
    )
    failures.check(argument(args, "--health-listen") is not None, f"{owner}: no --health-listen")
    failures.check(
        isinstance(spec.get("terminationGracePeriodSeconds"), int),
        f"{owner}: terminationGracePeriodSeconds is not set",
    )
    for service in SERVICES + ("audit",):
        url = argument(args, f"--{service}-url")
        target = "registers" if service == "audit" else service
        expected = f"https://{RELEASE}-{target}.{NAMESPACE}.svc:{values['ports']['grpc']}"
        failures.check(
            url == expected, f"{owner}: --{service}-url is {url!r}, expected {expected!r}"
        )

    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    failures.check("checksum/settings" in annotations, f"{owner}: no checksum/settings annotation")
    # Each settings file passed on the command line must be mounted from the ConfigMap.
    settings = [v for v in spec["volumes"] if v["name"] == "settings"][0]["configMap"]
    mounted = {item["path"] for item in settings.get("items", [])}
    for flag in ("--auth", "--messaging", "--referrals", "--delivery", "--connectors"):
        path = argument(args, flag)
        if path is not None:
            failures.check(
                path.startswith("/etc/rollcall/settings/") and path.rsplit("/", 1)[1] in mounted,
                f"{owner}: {flag} names {path}, which is not mounted",
            )
    failures.check(argument(args, "--auth") is not None, f"{owner}: no --auth")

    # The certificate, its key and the trusted CAs must be files of mounted volumes.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount_paths = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    tls_secret = volumes.get("tls", {}).get("secret", {}).get("secretName")
    expected_secret = (
        values["services"][component]["tls"]["secretName"]
        or f"{deployment['metadata']['name']}-tls"
    )
    failures.check(
        tls_secret == expected_secret,
        f"{owner}: mounts TLS Secret {tls_secret!r}, expected {expected_secret!r}",
    )
    bundle = values["tls"]["caBundle"]
    ca_volume, ca_file = (
        ("ca-bundle", bundle["key"]) if bundle["configMapName"] else ("tls", "ca.crt")
    )
    expected_files = {
        "--tls-cert": ("tls", "tls.crt"),
        "--tls-key": ("tls", "tls.key"),
        "--tls-ca": (ca_volume, ca_file),
        "--tls-client-ca": (ca_volume, ca_file),
    }
    for flag, (volume, file) in expected_files.items():
        expected_path = f"{mount_paths.get(volume, '(not mounted)')}/{file}"
        failures.check(
            argument(args, flag) == expected_path,
            f"{owner}: {flag} is {argument(args, flag)!r}, expected {expected_path!r}",
        )

    autoscaled = values["services"][component]["autoscaling"]["enabled"]
    failures.check(
        ("replicas" in deployment["spec"]) != autoscaled,
        f"{owner}: replicas must be set exactly when autoscaling is off",
    )


def check_manifests(manifests, values, failures):
    """Check the properties the chart promises on one set of rendered manifests."""
    by_kind = {}
    for manifest in manifests:
        by_kind.setdefault(manifest["kind"], []).append(manifest)
        labels = manifest["metadata"].get("labels", {})
        for label in STANDARD_LABELS:
            failures.check(label in labels, f"{name_of(manifest)}: label {label} is missing")
        failures.check(
            manifest["metadata"].get("namespace") == NAMESPACE,
            f"{name_of(manifest)}: not in the release namespace",
        )

    def components(kind):
        return sorted(
            m["metadata"]["labels"].get("app.kubernetes.io/component", "")
            for m in by_kind.get(kind, [])
        )

    services = sorted(SERVICES)
    autoscaled = sorted(s for s in SERVICES if values["services"][s]["autoscaling"]["enabled"])
    with_pdb = sorted(s for s in SERVICES if values["services"][s]["pdb"]["enabled"])
    policies = sorted(SERVICES + ("migrate",)) if values["networkPolicy"]["enabled"] else []
    certificates = services if values["tls"]["certManager"]["enabled"] else []
    expected = {
        "Deployment": services,
        "Service": services,
        "ServiceAccount": sorted(SERVICES + ("migrate",)),
        "PodDisruptionBudget": with_pdb,
        "HorizontalPodAutoscaler": autoscaled,
        "NetworkPolicy": policies,
        "Certificate": certificates,
        "Job": ["migrate"],
    }
    for kind, expected_components in expected.items():
        found = components(kind)
        failures.check(
            found == expected_components,
            f"{kind}: rendered for {found}, expected {expected_components}",
        )
    failures.check(
        "Secret" not in by_kind,
        "a Secret was rendered: the chart must only refer to existing Secrets",
    )
    failures.check(len(by_kind.get("ConfigMap", [])) == 1, "expected exactly one ConfigMap")
    for config_map in by_kind.get("ConfigMap", []):
        for key, text in config_map.get("data", {}).items():
            failures.check(
                "postgres://" not in text and "postgresql://" not in text,
                f"{name_of(config_map)}: {key} contains a database URL",
            )

    for owner, spec in pod_specs(manifests):
        check_pod(owner, spec, failures)
        check_database_ca(owner, spec, values, failures)
    for deployment in by_kind.get("Deployment", []):
        check_deployment(deployment, values, failures)

    for account in by_kind.get("ServiceAccount", []):
        failures.check(
            account.get("automountServiceAccountToken") is False,
            f"{name_of(account)}: automountServiceAccountToken is not false",
        )
    for service in by_kind.get("Service", []):
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        failures.check(
            set(ports) == {"grpc", "health"},
            f"{name_of(service)}: ports are {sorted(ports)}, expected grpc and health",
        )
        for name, number in (
            ("grpc", values["ports"]["grpc"]),
            ("health", values["ports"]["health"]),
        ):
            port = ports.get(name, {})
            failures.check(
                port.get("port") == number and port.get("targetPort") == number,
                f"{name_of(service)}: port {name} is not the number {number}",
            )

    deployments = {m["metadata"]["name"]: m for m in by_kind.get("Deployment", [])}
    for autoscaler in by_kind.get("HorizontalPodAutoscaler", []):
        spec = autoscaler["spec"]
        failures.check(
            autoscaler["apiVersion"] == "autoscaling/v2",
            f"{name_of(autoscaler)}: not autoscaling/v2",
        )
        failures.check(
            spec["scaleTargetRef"]["name"] in deployments,
            f"{name_of(autoscaler)}: targets a Deployment the chart does not render",
        )
        failures.check(
            1 <= spec["minReplicas"] <= spec["maxReplicas"],
            f"{name_of(autoscaler)}: minReplicas and maxReplicas are out of order",
        )
    for budget in by_kind.get("PodDisruptionBudget", []):
        target = deployments.get(budget["metadata"]["name"])
        failures.check(
            target is not None
            and budget["spec"]["selector"]["matchLabels"]
            == target["spec"]["selector"]["matchLabels"],
            f"{name_of(budget)}: does not select its Deployment's pods",
        )

    jobs = by_kind.get("Job", [])
    for job in jobs:
        annotations = job["metadata"].get("annotations", {})
        for key, value in HOOK_ANNOTATIONS.items():
            failures.check(
                annotations.get(key) == value,
                f"{name_of(job)}: annotation {key} is {annotations.get(key)!r}, expected {value!r}",
            )
        args = job["spec"]["template"]["spec"]["containers"][0].get("args", [])
        failures.check(args[:1] == ["migrate"], f"{name_of(job)}: does not run rollcall migrate")
        account = job["spec"]["template"]["spec"].get("serviceAccountName")
        hooks = [a for a in by_kind.get("ServiceAccount", []) if a["metadata"]["name"] == account]
        failures.check(
            len(hooks) == 1
            and hooks[0]["metadata"].get("annotations", {}).get("helm.sh/hook")
            == HOOK_ANNOTATIONS["helm.sh/hook"],
            f"{name_of(job)}: its ServiceAccount is not created by the same hook",
        )

    for policy in by_kind.get("NetworkPolicy", []):
        check_network_policy(policy, values, failures)


def check_network_policy(policy, values, failures):
    owner = name_of(policy)
    spec = policy["spec"]
    failures.check(
        sorted(spec.get("policyTypes", [])) == ["Egress", "Ingress"],
        f"{owner}: policyTypes is not Ingress and Egress",
    )
    # An ingress rule or egress rule without peers allows every peer.
    for rule in spec.get("ingress", []):
        failures.check(rule.get("from"), f"{owner}: an ingress rule allows every source")
    for rule in spec.get("egress", []):
        failures.check(rule.get("to"), f"{owner}: an egress rule allows every destination")
    dns = [
        r
        for r in spec.get("egress", [])
        if {(p.get("port"), p.get("protocol")) for p in r.get("ports", [])}
        == {(53, "UDP"), (53, "TCP")}
    ]
    failures.check(
        len(dns) == 1 and all("namespaceSelector" in peer for peer in dns[0]["to"]),
        f"{owner}: no egress rule to the DNS pods on UDP and TCP port 53",
    )
    postgres = values["networkPolicy"]["postgres"]
    allowed = [
        r
        for r in spec.get("egress", [])
        if any(p.get("port") == postgres["port"] for p in r.get("ports", []))
    ]
    failures.check(
        len(allowed) == 1
        and sorted(peer.get("ipBlock", {}).get("cidr", "") for peer in allowed[0]["to"])
        == sorted(postgres["cidrs"]),
        f"{owner}: egress to PostgreSQL is not exactly {postgres['cidrs']}",
    )
    if policy["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate":
        failures.check(spec.get("ingress") == [], f"{owner}: the migration Job accepts traffic")
        return
    if not spec.get("ingress"):
        failures.check(False, f"{owner}: no ingress rule for the gRPC port")
        return
    sources = spec["ingress"][0]["from"]
    expected = 1 + len(values["networkPolicy"]["ingressNamespaceSelectors"])
    failures.check(
        len(sources) == expected,
        f"{owner}: the first ingress rule has {len(sources)} sources, expected {expected}",
    )
    failures.check(
        sources[0].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/instance")
        == RELEASE,
        f"{owner}: the first source is not the release's own pods",
    )


def check_checksums(chart, values, failures):
    """A changed settings file must change the checksum of exactly the pods that mount it."""

    def checksums(values):
        _, manifests = render(chart, values)
        return {
            m["metadata"]["labels"]["app.kubernetes.io/component"]: m["spec"]["template"][
                "metadata"
            ]["annotations"]["checksum/settings"]
            for m in manifests
            if m["kind"] == "Deployment"
        }

    changed = merge(
        values,
        {"settings": {"messaging": values["settings"].get("messaging", "") + "\n# changed\n"}},
    )
    try:
        before = checksums(values)
        after = checksums(changed)
    except helm.HelmError as error:
        failures.check(False, f"checksums: rendering failed: {error}")
        return
    failures.check(
        before["cases"] != after["cases"],
        "changing the messaging settings does not change the cases pods' checksum",
    )
    for component in ("registers", "policy", "referrals", "mis-adapter"):
        failures.check(
            before[component] == after[component],
            f"changing the messaging settings changes the {component} pods' checksum",
        )


def check_good(chart, name, values, failures):
    """Lint, render and check one set of values that must pass."""
    started = time.monotonic()
    before = len(failures.messages)
    for version in KUBERNETES_VERSIONS:
        for message in lint(chart, values, version):
            failures.check(
                False,
                f"helm lint --strict (Kubernetes {version}): "
                f"{message['path']}: {message['error'].strip()}",
            )
    try:
        notes, manifests = render(chart, values)
    except helm.HelmError as error:
        manifests = []
        failures.check(False, f"rendering failed: {error}")
    else:
        failures.check(bool(notes.strip()), "NOTES.txt rendered empty")
        validate_schemas(manifests, failures)
        check_manifests(manifests, merge(chart_defaults(chart), values or {}), failures)
    failures.messages[before:] = [f"{name}: {m}" for m in failures.messages[before:]]
    if len(failures.messages) == before:
        print(
            f"ok: {name}: strict lint, {len(manifests)} manifests valid for Kubernetes "
            f"{' and '.join(KUBERNETES_VERSIONS)}, properties checked "
            f"({time.monotonic() - started:.1f} s)"
        )


def check_bad(chart, source, description, values, expected, failures):
    """Check that rendering rejects the values, naming the value, and that lint does too when
    the schema rejects them."""
    if source == SCHEMA:
        messages = [m["error"] for m in lint(chart, values, KUBERNETES_VERSIONS[0])]
        failures.check(
            any(expected in m for m in messages),
            f"bad values ({description}): helm lint did not report {expected!r}; "
            f"it reported {messages}",
        )
    try:
        render(chart, values)
        failures.check(False, f"bad values ({description}): rendering succeeded")
    except helm.HelmError as error:
        failures.check(
            expected in str(error),
            f"bad values ({description}): the render error does not name {expected!r}: {error}",
        )


def chart_defaults(chart):
    with open(chart / "values.yaml") as file:
        return yaml.safe_load(file)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chart", type=pathlib.Path, help="the chart's folder")
    parser.add_argument(
        "--values",
        type=pathlib.Path,
        action="append",
        default=[],
        help="a values file that must pass, besides the defaults (repeatable)",
    )
    args = parser.parse_args()
    # The Go library logs every template `fail` it renders. The checks report the same
    # messages, so the log is turned off.
    helm.disable_logging()
    failures = Failures()
    print(
        f"Helm {helm.helm_sdk_version()} (helm-python-sdk), "
        f"Kubernetes schemas from kubernetes-validate {kubernetes_validate.version.__version__}"
    )

    check_good(args.chart, "default values", None, failures)
    for path in args.values:
        with open(path) as file:
            check_good(args.chart, str(path), yaml.safe_load(file), failures)

    without_autoscaling = {
        "services": {"referrals": {"autoscaling": {"enabled": False}, "replicas": 3}}
    }
    check_good(args.chart, "referrals without an autoscaler", without_autoscaling, failures)
    # everything-on-values.yaml takes the database CA from a Secret.
    database_ca_from_config_map = {
        "database": {
            "tls": {"enabled": True, "caConfigMapName": "postgres-ca", "caKey": "root.crt"}
        }
    }
    check_good(args.chart, "database CA from a ConfigMap", database_ca_from_config_map, failures)
    check_checksums(args.chart, chart_defaults(args.chart), failures)

    before = len(failures.messages)
    for source, description, values, expected in BAD_VALUES:
        check_bad(args.chart, source, description, values, expected, failures)
    if len(failures.messages) == before:
        print(f"ok: {len(BAD_VALUES)} sets of bad values rejected, each naming the value")

    if failures.messages:
        for message in failures.messages:
            print(f"FAILED: {message}", file=sys.stderr)
        print(f"{len(failures.messages)} checks of the Helm chart failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
