"""A real Kubernetes control plane on loopback for tests/k8s: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok (simulated nodes and pod lifecycles: no container runs), Dapr's sentry and sidecar
injector registered as a mutating admission webhook, and the Dapr and KEDA CRDs. The binaries come from
deploy/local/ensure-k8s.sh."""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from pgmeta_devstack.layout import free_port_block

K8S_BIN = Path(os.environ.get("PGMETA_K8S_BIN", Path.home() / ".cache" / "pgmeta" / "k8s-bin"))
DAPR_NAMESPACE = "dapr-system"
TRUST_DOMAIN = "cluster.local"
# The name the injector's serving certificate carries (sentry issues it for this Service's DNS name).
INJECTOR_DNS_NAME = f"dapr-sidecar-injector.{DAPR_NAMESPACE}.svc"
SIDECAR_IMAGE = "daprio/daprd:1.18.2"
KWOK_NODES = (("kwok-node-a", "zone-a"), ("kwok-node-b", "zone-b"), ("kwok-node-c", "zone-c"))
PORTS = (
    "etcd",
    "etcd_peer",
    "apiserver",
    "controller_manager",
    "scheduler",
    "kwok",
    "kwok_node",
    "sentry",
    "sentry_healthz",
    "sentry_metrics",
    "injector",
    "injector_healthz",
    "injector_metrics",
    "webhook_relay",
)


class ControlPlaneError(RuntimeError):
    """A control-plane process failed to start or become ready."""


@dataclass(frozen=True)
class Ports:
    base: int

    def __getattr__(self, name: str) -> int:
        if name in PORTS:
            return self.base + PORTS.index(name)
        raise AttributeError(name)


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Warning:")]


@dataclass
class ControlPlane:
    """A running control plane; ``kubectl``/``helm`` run against it with an admin kubeconfig."""

    workdir: Path
    ports: Ports
    kubeconfig: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    webhook_relay: http.server.ThreadingHTTPServer | None = None

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("KUBE")}
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["HELM_CACHE_HOME"] = str(self.workdir / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(self.workdir / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.workdir / "helm" / "data")
        return env

    def run(self, program: str, *args: str, stdin: str | None = None, timeout: float = 240) -> CommandResult:
        executable = shutil.which("kubectl") if program == "kubectl" else str(K8S_BIN / program)
        if executable is None:
            raise ControlPlaneError("kubectl is not on PATH")
        completed = subprocess.run(
            [executable, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 240) -> CommandResult:
        return self.run("kubectl", *args, stdin=stdin, timeout=timeout)

    def helm(self, *args: str, timeout: float = 300) -> CommandResult:
        return self.run("helm", *args, timeout=timeout)

    def must(self, result: CommandResult) -> str:
        if result.returncode != 0:
            raise ControlPlaneError(f"command failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def get_json(self, *args: str) -> Any:
        return json.loads(self.must(self.kubectl("get", *args, "-o", "json")))

    def logs(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def wait_for(what: str, check: Callable[[], bool], timeout: float, plane: ControlPlane | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):
            if check():
                return
        if plane is not None:
            for name, process in plane.processes.items():
                if process.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited ({process.returncode}) while waiting for {what}:\n{plane.logs(name)}"
                    )
        time.sleep(0.5)
    raise ControlPlaneError(f"timed out after {timeout:.0f} s waiting for {what}")


def _open(request: urllib.request.Request, context: ssl.SSLContext | None = None, timeout: float = 3) -> int:
    # Loopback only: never through a proxy that the environment may name.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
        response.read()
        return int(response.status)


def _insecure_context() -> ssl.SSLContext:
    """The API server's self-signed serving certificate: loopback only, the token is the test's own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def https_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    return _open(request, _insecure_context()) == 200


def http_ok(url: str) -> bool:
    return _open(urllib.request.Request(url)) < 300


def missing_binaries() -> list[str]:
    programs = (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "helm",
        "kwok",
        "injector",
        "sentry",
    )
    missing = [name for name in (*programs, "kwok-stages.yaml") if not (K8S_BIN / name).exists()]
    if shutil.which("kubectl") is None:
        missing.append("kubectl (on PATH)")
    return missing


def _write_service_account_keys(pki: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (pki / "sa.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _write_kubeconfig(path: Path, port: int, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pgmeta-test",
                "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True},
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "pgmeta-test", "context": {"cluster": "pgmeta-test", "user": "admin"}}],
        "current-context": "pgmeta-test",
    }
    path.write_text(json.dumps(config))


def _spawn(plane: ControlPlane, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    logs = plane.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        plane.processes[name] = subprocess.Popen(
            list(argv),
            cwd=plane.workdir,
            env=env if env is not None else plane.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _stop_all(plane: ControlPlane) -> None:
    if plane.webhook_relay is not None:
        plane.webhook_relay.shutdown()
        plane.webhook_relay.server_close()
    # Reverse start order: clients before the API server, the API server before etcd.
    for process in reversed(list(plane.processes.values())):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _relay_certificate(credentials: Path, target: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 signed by sentry's issuer, so the API server trusts the relay with
    the very CA bundle the injector patches into its webhook configuration."""
    issuer_cert = x509.load_pem_x509_certificate((credentials / "issuer.crt").read_bytes())
    issuer_key = serialization.load_pem_private_key((credentials / "issuer.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dapr-webhook-relay")]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=12))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = builder.sign(issuer_key, algorithm)  # type: ignore[arg-type]
    chain = target / "relay.crt"
    chain.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM) + issuer_cert.public_bytes(serialization.Encoding.PEM)
    )
    key_file = target / "relay.key"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return chain, key_file


def _start_webhook_relay(plane: ControlPlane, credentials: Path) -> None:
    """The API server reaches the injector through this loopback TLS relay instead of a Service: there is no
    cluster network here, and Endpoints may not point at loopback. The relay forwards each AdmissionReview
    unchanged and checks the injector's own certificate (issued by sentry for the Service's DNS name)."""
    chain, key = _relay_certificate(credentials, plane.workdir)
    upstream = ssl.create_default_context(cafile=str(credentials / "ca.crt"))
    injector_port = plane.ports.injector

    class Relay(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            raw = socket.create_connection(("127.0.0.1", injector_port), timeout=10)
            with upstream.wrap_socket(raw, server_hostname=INJECTOR_DNS_NAME) as tls:
                connection = http.client.HTTPConnection(INJECTOR_DNS_NAME)
                connection.sock = tls
                connection.request("POST", self.path, body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                payload = answer.read()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", plane.ports.webhook_relay), Relay)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(str(chain), str(key))
    server.socket = serving.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="dapr-webhook-relay", daemon=True).start()
    plane.webhook_relay = server


def _webhook_configuration(plane: ControlPlane, ca_bundle: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "dapr-sidecar-injector"},
        "webhooks": [
            {
                "name": "sidecar-injector.dapr.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{plane.ports.webhook_relay}/mutate",
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                },
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                # Dapr's chart uses Ignore; the test must see a broken injector, not pods without sidecars.
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "namespaceSelector": {
                    "matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}
                    ]
                },
                "timeoutSeconds": 10,
            }
        ],
    }


def _kwok_node(name: str, zone: str) -> dict[str, Any]:
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": zone,
            },
        },
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def apply_objects(plane: ControlPlane, objects: Sequence[dict[str, Any]]) -> None:
    plane.must(
        plane.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )
    )


def _start_kubernetes(plane: ControlPlane, token: str) -> None:
    ports, work = plane.ports, plane.workdir
    pki = work / "pki"
    pki.mkdir()
    _write_service_account_keys(pki)
    (work / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
    _spawn(
        plane,
        "etcd",
        [
            str(K8S_BIN / "etcd"),
            "--name",
            "default",
            "--data-dir",
            str(work / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{ports.etcd}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{ports.etcd}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{ports.etcd_peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{ports.etcd_peer}",
            "--initial-cluster",
            f"default=http://127.0.0.1:{ports.etcd_peer}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ],
    )
    wait_for("etcd", lambda: http_ok(f"http://127.0.0.1:{ports.etcd}/health"), 240, plane)
    _spawn(
        plane,
        "kube-apiserver",
        [
            str(K8S_BIN / "kube-apiserver"),
            "--etcd-servers",
            f"http://127.0.0.1:{ports.etcd}",
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--secure-port",
            str(ports.apiserver),
            "--cert-dir",
            str(pki),
            "--token-auth-file",
            str(work / "tokens.csv"),
            "--authorization-mode",
            "Node,RBAC",
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file",
            str(pki / "sa.pub"),
            "--service-account-signing-key-file",
            str(pki / "sa.key"),
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--allow-privileged",
            # No Endpoints for the `kubernetes` Service: they may not point at loopback.
            "--endpoint-reconciler-type",
            "none",
            "--enable-priority-and-fairness=false",
        ],
    )
    wait_for(
        "kube-apiserver /readyz", lambda: https_ok(f"https://127.0.0.1:{ports.apiserver}/readyz", token), 600, plane
    )
    _write_kubeconfig(plane.kubeconfig, ports.apiserver, token)
    # kubectl fetches the OpenAPI document before validating, with a 32 s limit; the server builds it on first
    # request, which on a busy 2-core machine takes longer. Build it once here, without that limit.
    warm_up = urllib.request.Request(
        f"https://127.0.0.1:{ports.apiserver}/openapi/v2", headers={"Authorization": f"Bearer {token}"}
    )
    _open(warm_up, _insecure_context(), timeout=600)
    _spawn(
        plane,
        "kube-controller-manager",
        [
            str(K8S_BIN / "kube-controller-manager"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--authentication-kubeconfig",
            str(plane.kubeconfig),
            "--authorization-kubeconfig",
            str(plane.kubeconfig),
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(ports.controller_manager),
            "--leader-elect=false",
            # Controllers act as their own service accounts, as in a real cluster: the sidecar injector only
            # mutates pods created by the ReplicaSet/Deployment controllers' accounts.
            "--use-service-account-credentials",
            "--service-account-private-key-file",
            str(pki / "sa.key"),
            "--root-ca-file",
            str(pki / "apiserver.crt"),
            "--cluster-cidr",
            "10.244.0.0/16",
        ],
    )
    _spawn(
        plane,
        "kube-scheduler",
        [
            str(K8S_BIN / "kube-scheduler"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--authentication-kubeconfig",
            str(plane.kubeconfig),
            "--authorization-kubeconfig",
            str(plane.kubeconfig),
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(ports.scheduler),
            "--leader-elect=false",
        ],
    )
    _spawn(
        plane,
        "kwok",
        [
            str(K8S_BIN / "kwok"),
            "--config",
            str(K8S_BIN / "kwok-stages.yaml"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--manage-nodes-with-label-selector=",
            "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
            "--disregard-status-with-label-selector=",
            "--cidr=10.0.0.1/24",
            "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{ports.kwok}",
            f"--node-port={ports.kwok_node}",
        ],
    )
    wait_for(
        "kube-controller-manager", lambda: https_ok(f"https://127.0.0.1:{ports.controller_manager}/healthz"), 480, plane
    )
    wait_for("kube-scheduler", lambda: https_ok(f"https://127.0.0.1:{ports.scheduler}/healthz"), 480, plane)
    apply_objects(plane, [_kwok_node(name, zone) for name, zone in KWOK_NODES])

    def nodes_ready() -> bool:
        nodes = plane.get_json("nodes")["items"]
        ready = [
            n
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) == len(KWOK_NODES)

    wait_for("kwok nodes Ready", nodes_ready, 240, plane)
    # The `default` ServiceAccount appears once the controller manager's token controllers run.
    wait_for(
        "default service account", lambda: plane.kubectl("get", "serviceaccount", "default").returncode == 0, 240, plane
    )


def _install_crds(plane: ControlPlane) -> None:
    crds = sorted((K8S_BIN / "crds" / "dapr").glob("*.yaml")) + sorted((K8S_BIN / "crds" / "keda").glob("*.yaml"))
    args = [arg for crd in crds for arg in ("-f", str(crd))]
    plane.must(plane.kubectl("apply", "--server-side", *args))
    names = [doc["metadata"]["name"] for crd in crds for doc in yaml.safe_load_all(crd.read_text()) if doc]
    plane.must(
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{name}" for name in names])
    )


def _start_dapr(plane: ControlPlane) -> None:
    ports, work = plane.ports, plane.workdir
    credentials = work / "sentry"
    credentials.mkdir()
    plane.must(plane.kubectl("create", "namespace", DAPR_NAMESPACE))
    # Sentry's own Configuration (in a cluster: the `daprsystem` Configuration object).
    sentry_config = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "daprsystem"},
        "spec": {"mtls": {"enabled": True, "workloadCertTTL": "24h", "controlPlaneTrustDomain": TRUST_DOMAIN}},
    }
    (work / "sentry-config.yaml").write_text(json.dumps(sentry_config))
    # The tests run as root (in a cluster these run as non-root containers); Dapr refuses root unless told.
    dapr_env = {**plane.env(), "NAMESPACE": DAPR_NAMESPACE, "DAPR_UNSAFE_SKIP_CONTAINER_UID_GID_CHECK": "true"}
    # Sentry in standalone mode keeps its CA in files (in a cluster: the dapr-trust-bundle secret) and
    # accepts the injector's certificate request without a service account token (no pod to bind one to).
    _spawn(
        plane,
        "sentry",
        [
            str(K8S_BIN / "sentry"),
            "--mode",
            "standalone",
            "--issuer-credentials",
            str(credentials),
            "--trust-domain",
            TRUST_DOMAIN,
            "--config",
            str(work / "sentry-config.yaml"),
            "--port",
            str(ports.sentry),
            "--listen-address",
            "127.0.0.1",
            "--healthz-port",
            str(ports.sentry_healthz),
            "--healthz-listen-address",
            "127.0.0.1",
            "--metrics-port",
            str(ports.sentry_metrics),
            "--metrics-listen-address",
            "127.0.0.1",
        ],
        env=dapr_env,
    )
    wait_for("dapr sentry", lambda: http_ok(f"http://127.0.0.1:{ports.sentry_healthz}/healthz"), 240, plane)
    wait_for("sentry's CA files", lambda: (credentials / "issuer.key").exists(), 120, plane)
    _start_webhook_relay(plane, credentials)
    apply_objects(plane, [_webhook_configuration(plane, (credentials / "ca.crt").read_bytes())])
    _spawn(
        plane,
        "injector",
        [
            str(K8S_BIN / "injector"),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--port",
            str(ports.injector),
            "--listen-address",
            "127.0.0.1",
            "--healthz-port",
            str(ports.injector_healthz),
            "--healthz-listen-address",
            "127.0.0.1",
            "--metrics-port",
            str(ports.injector_metrics),
            "--metrics-listen-address",
            "127.0.0.1",
        ],
        env={
            **dapr_env,
            "SIDECAR_IMAGE": SIDECAR_IMAGE,
            "SIDECAR_IMAGE_PULL_POLICY": "IfNotPresent",
            "KUBE_CLUSTER_DOMAIN": "cluster.local",
            "DAPR_TRUST_ANCHORS_FILE": str(credentials / "ca.crt"),
            "DAPR_CONTROL_PLANE_TRUST_DOMAIN": TRUST_DOMAIN,
            "DAPR_SENTRY_ADDRESS": f"127.0.0.1:{ports.sentry}",
            "ACTORS_ENABLED": "true",
            "ACTORS_SERVICE_NAME": "placement",
            "ACTORS_SERVICE_ADDRESS": f"dapr-placement-server.{DAPR_NAMESPACE}.svc.cluster.local:50005",
        },
    )
    # Ready once it holds a certificate from sentry and has patched the webhook's CA bundle.
    wait_for("dapr sidecar injector", lambda: http_ok(f"http://127.0.0.1:{ports.injector_healthz}/healthz"), 360, plane)


@contextmanager
def control_plane(workdir: Path) -> Iterator[ControlPlane]:
    """Starts everything once, yields when every part is ready, stops every process it started."""
    missing = missing_binaries()
    if missing:
        raise ControlPlaneError(
            f"missing in {K8S_BIN}: {', '.join(missing)}; run `make k8s` (deploy/local/ensure-k8s.sh)"
        )
    base = free_port_block(27100, size=len(PORTS) + 7)
    plane = ControlPlane(workdir=workdir, ports=Ports(base), kubeconfig=workdir / "kubeconfig")
    try:
        _start_kubernetes(plane, secrets.token_hex(16))
        _install_crds(plane)
        _start_dapr(plane)
        yield plane
    finally:
        _stop_all(plane)
