//! The EC2 side of failover (feature `aws`): one [`Ec2`] handle per node wraps the SDK client with what a
//! failover needs and the SDK does not give: a timeout per attempt, retries with jittered exponential backoff on
//! throttling, 5xx, timeouts and connection failures inside a total budget per call, a metric and a log line per
//! attempt, and a [`Claim`] check before every attempt (a node that lost the role stops between two calls).
//! Fencing tags ([`Ec2::fence`]) mark each moved resource with the node and the Raft term that moved it; a move
//! for an older term than the tag's is refused.
//!
//! Who this node is on EC2 (instance, ENI, subnet, region) comes from `[aws]`, else from the instance metadata
//! service (IMDSv2) and one DescribeInstances, resolved at the first move and kept. Credentials come from the
//! standard AWS chain. The SDK's own retries are off: ours are the ones counted and bounded.
//!
//! ```text
//!  mod.rs   Ec2: client, identity, call() with retries, fence()
//!  vip.rs   AwsVip: secondary IP, Elastic IP, route-table entry
//!  ebs.rs   EbsVolume: detach elsewhere, attach here, wait, device, mount, hooks
//! ```

mod ebs;
mod vip;

pub use ebs::{EbsError, EbsSpec, EbsVolume};
pub use vip::{AwsVip, AwsVipError, AwsVipSpec};

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Tag};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::Claim;
use crate::config::AwsConfig;
use crate::metrics as m;

/// The tag on a moved resource naming its holder: `node=2 term=7`.
pub const OWNER_TAG: &str = "sipfront:owner";

/// What went wrong talking to EC2.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// EC2 answered with an error that retrying will not fix (permissions, a wrong id ...).
    #[error("{op}: {code}: {message}")]
    Api { op: &'static str, code: String, message: String },
    /// Throttling, 5xx, timeouts or connection failures until the call's budget ran out.
    #[error("{op}: gave up after {attempts} attempts in {spent:?}; last error: {last}")]
    Exhausted { op: &'static str, attempts: u32, spent: Duration, last: String },
    /// The resource carries a newer term than ours: someone else owns it now.
    #[error("fenced: {resource} belongs to node {node} since term {term}, newer than our term {ours}")]
    Fenced { resource: String, node: u32, term: u64, ours: u64 },
    /// This node lost the role (or the term ended) before the call.
    #[error("{op}: no longer entitled to move: {why}")]
    NotEntitled { op: &'static str, why: String },
    /// Who this node is on EC2 could not be found out.
    #[error("finding this node on EC2: {what}: {reason}")]
    Identity { what: &'static str, reason: String },
    /// EC2 answered something the move cannot go on from.
    #[error("{op}: {detail}")]
    Unexpected { op: &'static str, detail: String },
}

/// This node on EC2.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub eni_id: String,
    pub subnet_id: String,
    pub vpc_id: String,
    /// The ENI's primary private address.
    pub primary_ip: String,
}

/// The EC2 client of this node, with retries, fencing and its identity.
pub struct Ec2 {
    cfg: AwsConfig,
    client: OnceCell<aws_sdk_ec2::Client>,
    identity: OnceCell<Identity>,
    /// Attempts that failed and were retried, since start (also a metric; this one is for status and tests).
    retried: std::sync::atomic::AtomicU64,
}

/// How a failed attempt is treated.
enum Failure {
    Retry { kind: String, detail: String },
    Fatal { code: String, message: String },
}

impl Ec2 {
    /// Nothing is contacted yet: the client and the identity are made at the first call.
    pub fn new(cfg: AwsConfig) -> Ec2 {
        Ec2 { cfg, client: OnceCell::new(), identity: OnceCell::new(), retried: Default::default() }
    }

    /// How many attempts failed and were retried since start.
    pub fn retries(&self) -> u64 {
        self.retried.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn client(&self) -> Result<&aws_sdk_ec2::Client, AwsError> {
        self.client.get_or_try_init(|| self.make_client()).await
    }

    async fn make_client(&self) -> Result<aws_sdk_ec2::Client, AwsError> {
        use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region};
        let region = match &self.cfg.region {
            Some(r) => r.clone(),
            None => imds_get("/latest/meta-data/placement/region", "region").await?,
        };
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.cfg.call_timeout.get().min(Duration::from_secs(2)))
            .operation_attempt_timeout(self.cfg.call_timeout.get())
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(url) = &self.cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        Ok(aws_sdk_ec2::Client::new(&loader.load().await))
    }

    /// This node's instance, ENI, subnet and VPC: from `[aws]`, else from IMDS and EC2; kept once known.
    pub async fn identity(&self, claim: &Claim) -> Result<&Identity, AwsError> {
        self.identity.get_or_try_init(|| self.find_identity(claim)).await
    }

    async fn find_identity(&self, claim: &Claim) -> Result<Identity, AwsError> {
        let c = self.client().await?;
        let instance_id = match &self.cfg.instance_id {
            Some(i) => i.clone(),
            None => imds_get("/latest/meta-data/instance-id", "instance id").await?,
        };
        let eni_id = match &self.cfg.eni_id {
            Some(e) => e.clone(),
            None => {
                let out = self
                    .call("DescribeInstances", claim, || c.describe_instances().instance_ids(&instance_id).send())
                    .await?;
                let inst = out.reservations().iter().flat_map(|r| r.instances()).next().ok_or_else(|| {
                    AwsError::Identity { what: "primary ENI", reason: format!("instance {instance_id} not found") }
                })?;
                inst.network_interfaces()
                    .iter()
                    .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
                    .and_then(|n| n.network_interface_id())
                    .map(str::to_owned)
                    .ok_or_else(|| AwsError::Identity {
                        what: "primary ENI",
                        reason: format!("instance {instance_id} has no interface at device index 0"),
                    })?
            }
        };
        let out = self
            .call("DescribeNetworkInterfaces", claim, || {
                c.describe_network_interfaces().network_interface_ids(&eni_id).send()
            })
            .await?;
        let eni = out
            .network_interfaces()
            .first()
            .ok_or_else(|| AwsError::Identity { what: "ENI", reason: format!("{eni_id} not found") })?;
        let id = Identity {
            instance_id,
            subnet_id: eni.subnet_id().unwrap_or_default().to_owned(),
            vpc_id: eni.vpc_id().unwrap_or_default().to_owned(),
            primary_ip: eni.private_ip_address().unwrap_or_default().to_owned(),
            eni_id,
        };
        tracing::info!(instance = %id.instance_id, eni = %id.eni_id, subnet = %id.subnet_id, "aws: this node on EC2");
        Ok(id)
    }

    /// The SDK client, once it is made (for the VIP and volume code).
    pub(crate) async fn sdk(&self) -> Result<&aws_sdk_ec2::Client, AwsError> {
        self.client().await
    }

    /// Run one EC2 operation with the retry policy; `claim` is checked before every attempt.
    pub async fn call<T, E, F, Fut>(&self, op: &'static str, claim: &Claim, mut attempt: F) -> Result<T, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let budget = self.cfg.call_budget.get();
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            if let Err(why) = claim.valid() {
                return Err(AwsError::NotEntitled { op, why });
            }
            attempts += 1;
            let t0 = Instant::now();
            let result = tokio::time::timeout(self.cfg.call_timeout.get(), attempt()).await;
            metrics::histogram!(m::AWS_CALL_SECONDS, "op" => op).record(t0.elapsed().as_secs_f64());
            let failure = match result {
                Ok(Ok(v)) => {
                    metrics::counter!(m::AWS_CALLS, "op" => op, "outcome" => "ok").increment(1);
                    tracing::debug!(op, attempts, took_ms = t0.elapsed().as_millis() as u64, "aws call");
                    return Ok(v);
                }
                Ok(Err(e)) => classify(&e),
                Err(_) => Failure::Retry { kind: "timeout".into(), detail: format!("no answer in {:?}", t0.elapsed()) },
            };
            match failure {
                Failure::Fatal { code, message } => {
                    metrics::counter!(m::AWS_CALLS, "op" => op, "outcome" => "failed").increment(1);
                    metrics::counter!(m::AWS_CALL_ERRORS, "op" => op, "code" => code.clone()).increment(1);
                    return Err(AwsError::Api { op, code, message });
                }
                Failure::Retry { kind, detail } => {
                    metrics::counter!(m::AWS_CALL_ERRORS, "op" => op, "code" => kind.clone()).increment(1);
                    let wait = jitter(backoff);
                    let spent = started.elapsed();
                    if spent + wait >= budget {
                        metrics::counter!(m::AWS_CALLS, "op" => op, "outcome" => "failed").increment(1);
                        let last = format!("{kind}: {detail}");
                        tracing::error!(op, attempts, spent_ms = spent.as_millis() as u64, error = %last, "aws: giving up");
                        return Err(AwsError::Exhausted { op, attempts, spent, last });
                    }
                    metrics::counter!(m::AWS_CALLS, "op" => op, "outcome" => "retried").increment(1);
                    self.retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(op, attempt = attempts, error = %kind, detail = %detail, retry_in_ms = wait.as_millis() as u64, "aws: retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Check the fencing tag of `resource` (tag key `key`) against the claim's term and write ours. Refused when
    /// the tag names a newer term, or the same term and another node (which Raft rules out; reported if seen).
    /// Gives back the previous owner (node, term), if the resource had one.
    pub async fn fence(&self, claim: &Claim, resource: &str, key: &str) -> Result<Option<(u32, u64)>, AwsError> {
        let c = self.client().await?;
        let previous = self.owner_tag(claim, resource, key).await?;
        if let Some((node, term)) = previous {
            if term > claim.term || (term == claim.term && node != claim.node) {
                metrics::counter!(m::FAILOVER_FENCED, "resource" => resource.to_owned()).increment(1);
                tracing::error!(
                    resource,
                    owner = node,
                    owner_term = term,
                    our_term = claim.term,
                    "aws: refusing to move a resource a newer term owns"
                );
                return Err(AwsError::Fenced { resource: resource.to_owned(), node, term, ours: claim.term });
            }
            if (node, term) == (claim.node, claim.term) {
                return Ok(previous);
            }
        }
        let value = owner_value(claim.node, claim.term);
        self.call("CreateTags", claim, || {
            c.create_tags().resources(resource).tags(Tag::builder().key(key).value(&value).build()).send()
        })
        .await?;
        Ok(previous)
    }

    /// The owner tag of `resource` (`key`), if any: (node, term).
    pub async fn owner_tag(&self, claim: &Claim, resource: &str, key: &str) -> Result<Option<(u32, u64)>, AwsError> {
        let c = self.client().await?;
        let out = self
            .call("DescribeTags", claim, || {
                c.describe_tags()
                    .filters(Filter::builder().name("resource-id").values(resource).build())
                    .filters(Filter::builder().name("key").values(key).build())
                    .send()
            })
            .await?;
        Ok(out.tags().iter().find_map(|t| t.value().and_then(parse_owner)))
    }
}

/// `node=2 term=7`
pub fn owner_value(node: u32, term: u64) -> String {
    format!("node={node} term={term}")
}

/// The inverse of [`owner_value`].
pub fn parse_owner(v: &str) -> Option<(u32, u64)> {
    let mut node = None;
    let mut term = None;
    for part in v.split_whitespace() {
        match part.split_once('=') {
            Some(("node", n)) => node = n.parse().ok(),
            Some(("term", t)) => term = t.parse().ok(),
            _ => {}
        }
    }
    Some((node?, term?))
}

fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    e: &SdkError<E, HttpResponse>,
) -> Failure {
    match e {
        SdkError::TimeoutError(_) => Failure::Retry { kind: "timeout".into(), detail: "attempt timed out".into() },
        SdkError::DispatchFailure(_) => {
            Failure::Retry { kind: "connection".into(), detail: DisplayErrorContext(e).to_string() }
        }
        SdkError::ResponseError(_) => Failure::Retry { kind: "bad-response".into(), detail: format!("{e}") },
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = e.code().unwrap_or("Unknown").to_owned();
            let message = e.message().unwrap_or_default().to_owned();
            let throttled = matches!(
                code.as_str(),
                "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled" | "SlowDown"
            );
            if throttled || status >= 500 {
                Failure::Retry { kind: code, detail: format!("HTTP {status}: {message}") }
            } else {
                Failure::Fatal { code, message }
            }
        }
        // ConstructionFailure and whatever later versions add: a request we could not even build.
        _ => Failure::Fatal { code: "Client".into(), message: DisplayErrorContext(e).to_string() },
    }
}

/// A random wait in `[d/2, d]` ("equal jitter"): retries of nodes throttled together spread out.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let half = d / 2;
    half + Duration::from_nanos(r % (half.as_nanos().max(1) as u64))
}

/// One IMDSv2 lookup (the client fetches and refreshes the session token itself).
async fn imds_get(path: &'static str, what: &'static str) -> Result<String, AwsError> {
    let client = aws_config::imds::Client::builder().build();
    client
        .get(path)
        .await
        .map(|v| v.as_ref().trim().to_owned())
        .map_err(|e| AwsError::Identity { what, reason: format!("instance metadata {path}: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tag_round_trip() {
        assert_eq!(parse_owner(&owner_value(3, 42)), Some((3, 42)));
        assert_eq!(parse_owner("node=3"), None);
        assert_eq!(parse_owner("garbage"), None);
    }

    #[test]
    fn jitter_stays_in_half_to_full() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(400));
            assert!(j >= Duration::from_millis(200) && j <= Duration::from_millis(400), "{j:?}");
        }
    }
}
