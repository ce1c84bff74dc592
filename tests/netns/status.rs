//! `sipfront status` of a node, as its own namespace sees it, and the columns of its table: one row per node,
//! `id name role term leader vip log applied dialogs flows note`.

use std::process::Command;

use super::shared::sipfront_bin;
use super::topology::{Lab, Ns};

/// Columns of the status table.
pub const ROLE: usize = 2;
pub const LEADER: usize = 4;
pub const APPLIED: usize = 7;
pub const DIALOGS: usize = 8;

impl Lab {
    /// `sipfront status --config nI.toml` run in node i's namespace: its stdout and stderr.
    pub fn status(&self, i: u8) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(Ns::Node(i)), &sipfront_bin(), "status", "--config"])
            .arg(self.dir.join(format!("n{i}.toml")))
            .output()
            .expect("run sipfront status");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

/// The row of node `id` in a status table ("" when it has none).
pub fn status_row(status: &str, id: u8) -> &str {
    status.lines().find(|l| l.split_whitespace().next() == Some(&id.to_string())).unwrap_or_default()
}

/// Column `col` of node `id`'s row.
pub fn status_field(status: &str, id: u8, col: usize) -> Option<&str> {
    status_row(status, id).split_whitespace().nth(col)
}
