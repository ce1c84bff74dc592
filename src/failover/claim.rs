//! A [`Claim`]: the right to move the cluster's resources to this node, as the Raft leader of one term. Every
//! step of a move asks the claim first, so a node that lost the role (or whose term is over) stops between two
//! API calls instead of finishing a move on behalf of a past term. The term is also written on the resources
//! (fencing tags), so a node that acts late is refused by the resource itself.

use std::sync::Arc;
use std::time::Duration;

type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
type Silence = Arc<dyn Fn(u32) -> Option<Duration> + Send + Sync>;

/// Who may move resources here and until when.
#[derive(Clone)]
pub struct Claim {
    /// This node's id, written on every resource it moves.
    pub node: u32,
    /// The Raft term the claim belongs to.
    pub term: u64,
    /// `Ok` while this node is still the leader of `term`; else why not.
    check: Check,
    /// How long a peer has not acknowledged this leader (`None`: unknown, e.g. never since this term began).
    silence: Silence,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claim(node {}, term {})", self.node, self.term)
    }
}

impl Claim {
    pub fn new(
        node: u32,
        term: u64,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
        silence: impl Fn(u32) -> Option<Duration> + Send + Sync + 'static,
    ) -> Claim {
        Claim { node, term, check: Arc::new(check), silence: Arc::new(silence) }
    }

    /// A claim that never lapses, and knows nothing of peers: tools and tests driving one move by hand.
    pub fn fixed(node: u32, term: u64) -> Claim {
        Claim::new(node, term, || Ok(()), |_| None)
    }

    /// `Ok` while the claim holds.
    pub fn valid(&self) -> Result<(), String> {
        (self.check)()
    }

    /// How long node `peer` has been silent towards this leader, if known.
    pub fn peer_silent_for(&self, peer: u32) -> Option<Duration> {
        (self.silence)(peer)
    }
}
