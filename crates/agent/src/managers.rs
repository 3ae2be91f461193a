//! The node's connection to the managers: the channel in use (replaced when the node's
//! certificate is renewed or it fails over to another manager) and where a follower says
//! the leader is.

use tonic::transport::Channel;

/// The node's current channel to the managers; replaced when its certificate is renewed.
pub type Channels = tokio::sync::watch::Receiver<Channel>;

/// The leader's address a follower's refusal names, if it does.
pub fn leader_pointer(s: &tonic::Status) -> Option<String> {
    s.metadata()
        .get("shoal-leader")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
