//! The Kubernetes API clients. Every request is bounded in time (a request
//! hung on a dead pooled connection fails and is retried instead of holding
//! a lock, a lease or a heartbeat forever); watches are not (they are meant
//! to stay open, and kube's watcher has its own idle timeout).

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, PostParams};
use kube::client::ClientBuilder;
use kube::client::retry::RetryPolicy;
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;
use tracing::{debug, info};

/// The two clients: same server and credentials, two connection pools.
#[derive(Clone)]
pub struct Clients {
    /// Requests that get one answer: each gives up after the timeout.
    pub requests: Client,
    /// Watches: no read timeout.
    pub watches: Client,
}

/// How long connecting may take, whatever the request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Clients {
    pub fn new(config: kube::Config, timeout: Duration) -> anyhow::Result<Clients> {
        anyhow::ensure!(!timeout.is_zero(), "--api-timeout must be more than 0");
        let mut requests = config.clone();
        requests.connect_timeout = Some(CONNECT_TIMEOUT.min(timeout));
        requests.read_timeout = Some(timeout);
        requests.write_timeout = Some(timeout);
        // From when the request is sent, not from when its pooled
        // connection went idle.
        requests.reset_reader_on_write = true;
        let mut watches = config;
        watches.connect_timeout = Some(CONNECT_TIMEOUT);
        Ok(Clients {
            requests: client(requests)?,
            watches: client(watches)?,
        })
    }

    /// From the pod's service account, or KUBECONFIG.
    pub async fn infer(timeout: Duration) -> anyhow::Result<Clients> {
        let config = kube::Config::infer()
            .await
            .context("no Kubernetes API: run in a pod, or set KUBECONFIG")?;
        Clients::new(config, timeout)
    }
}

/// Retries of one request that got 429, 503 or 504: a few, within about a
/// second (a 429's Retry-After honoured), then the caller's own backoff
/// decides. kube's default retry (5 ms doubling to 1000 s, 15 times) kept a
/// request of an API server answering 503 going for about five minutes,
/// holding whoever made it (a prepare the kubelet waits for, the
/// heartbeat), with hundreds of requests a minute from the agent's tasks
/// together (the fault suite saw 481 in the outage's 10 s).
const RETRIES: u32 = 3;
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

fn client(mut config: kube::Config) -> anyhow::Result<Client> {
    config.default_retry = false;
    let policy = RetryPolicy::new(RETRY_FIRST, RETRY_MAX, RETRIES, true).context("the API retry policy")?;
    Ok(ClientBuilder::try_from(config)
        .context("the Kubernetes API client")?
        // The retry layer clones the service it wraps; kube's is boxed.
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(policy))
        .build())
}

/// The ServiceAccount these credentials are, as the owner of what the agent
/// creates in its namespace (its Leases): the garbage collector deletes them
/// with it, so `helm uninstall` leaves none behind. From a SelfSubjectReview
/// (every authenticated client may ask who it is; a service account's user
/// uid is the ServiceAccount's uid). None for credentials that are not a
/// service account of that namespace (a kubeconfig), or a server that says
/// no; asked again at the next write while the server cannot be reached (a
/// pod may start before its network works: once, a Lease made then went
/// without an owner and outlived `helm uninstall`).
pub struct LeaseOwner {
    client: Client,
    namespace: Option<String>,
    known: Option<Option<OwnerReference>>,
}

impl LeaseOwner {
    pub fn new(client: Client, namespace: Option<&str>) -> LeaseOwner {
        LeaseOwner {
            client,
            namespace: namespace.map(str::to_string),
            known: None,
        }
    }

    /// The owner, asking the server until it has answered once.
    pub async fn get(&mut self) -> Option<OwnerReference> {
        if let Some(known) = &self.known {
            return known.clone();
        }
        let namespace = self.namespace.as_deref()?;
        let review = Api::<SelfSubjectReview>::all(self.client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await;
        let owner = match review {
            Ok(r) => r
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| service_account_of(u.username.as_deref()?, namespace, u.uid?)),
            // The server answered no (an old server, an authorizer that
            // refuses it): for good.
            Err(kube::Error::Api(s)) if s.code < 500 => {
                debug!(code = s.code, "no SelfSubjectReview: the Leases get no owner");
                None
            }
            Err(e) => {
                debug!(error = %e, "no SelfSubjectReview yet: asking again at the next write");
                return None;
            }
        };
        if let Some(o) = &owner {
            info!(service_account = %o.name, "the Leases are owned by this ServiceAccount (deleted with it)");
        }
        self.known = Some(owner.clone());
        owner
    }
}

/// Adds `owner` to an object's owner references unless it is there already
/// (an object written before the agent knew its owner gets it at its next
/// write).
pub fn add_owner(meta: &mut ObjectMeta, owner: Option<&OwnerReference>) {
    if let Some(o) = owner
        && !meta.owner_references.iter().flatten().any(|r| r.uid == o.uid)
    {
        meta.owner_references.get_or_insert_with(Vec::new).push(o.clone());
    }
}

/// `system:serviceaccount:<namespace>:<name>` of `namespace` → its owner reference.
fn service_account_of(username: &str, namespace: &str, uid: String) -> Option<OwnerReference> {
    let (ns, name) = username.strip_prefix("system:serviceaccount:")?.split_once(':')?;
    (ns == namespace && !name.is_empty() && !uid.is_empty()).then(|| OwnerReference {
        api_version: "v1".into(),
        kind: "ServiceAccount".into(),
        name: name.into(),
        uid,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_service_account_of_the_namespace_owns_the_leases() {
        let o = service_account_of(
            "system:serviceaccount:mock-device:mock-accel-node-agent",
            "mock-device",
            "u1".into(),
        )
        .unwrap();
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("ServiceAccount", "mock-accel-node-agent", "u1")
        );
        assert_eq!(
            o.controller, None,
            "no controller: the agent is not the Lease's controller"
        );
        assert!(service_account_of("system:serviceaccount:other:sa", "mock-device", "u1".into()).is_none());
        assert!(service_account_of("kubernetes-admin", "mock-device", "u1".into()).is_none());
        assert!(service_account_of("system:serviceaccount:mock-device:sa", "mock-device", String::new()).is_none());
    }

    #[test]
    fn an_owner_is_added_once() {
        let o = service_account_of("system:serviceaccount:ns:sa", "ns", "u1".into());
        let mut meta = ObjectMeta::default();
        add_owner(&mut meta, o.as_ref());
        add_owner(&mut meta, o.as_ref());
        add_owner(&mut meta, None);
        assert_eq!(meta.owner_references.as_ref().map(Vec::len), Some(1));
    }

    /// A server that cannot be reached is asked again at the next write;
    /// one that answers (here: no such API) is not.
    #[tokio::test]
    async fn the_owner_is_asked_again_until_the_server_answers() {
        use mock_device_testkit::apiserver::{ApiServer, Config};
        let client = |url: &str| Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        // Nothing listens there (a port just freed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut unreachable = LeaseOwner::new(client(&format!("http://127.0.0.1:{port}")), Some("mock-device"));
        for _ in 0..2 {
            assert_eq!(unreachable.get().await, None);
            assert!(unreachable.known.is_none(), "asked again at the next write");
        }
        let server = ApiServer::start(Config::default()).unwrap();
        let mut answered = LeaseOwner::new(client(&server.url()), Some("mock-device"));
        assert_eq!(answered.get().await, None);
        assert_eq!(answered.known, Some(None), "an answer is kept");
        let mut no_namespace = LeaseOwner::new(client(&server.url()), None);
        assert_eq!(no_namespace.get().await, None);
    }
}
