//! The lab's result: one markdown row per stack and event, from the [`Outcome`]s of its trials, and the legend.
//! Pure text; it must not run anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::trial::{Fault, Outcome};

/// The results of one stack: its name and every outcome, or why it was not run.
pub struct StackResult {
    pub name: String,
    pub outcomes: Result<Vec<Outcome>, String>,
}

fn ms(d: Duration) -> String {
    format!("{}", d.as_millis())
}

/// The markdown table (with a header line saying how it was made) and its legend.
pub fn markdown(results: &[StackResult], header: &str) -> String {
    let mut s = format!("{header}\n\n");
    s.push_str(
        "| stack | event | trials | first answer min / median / max (ms) | longest gap max (ms) | \
         two VIP holders: longest (ms), most at once | new calls failed | held calls not ended | VIP path (count) / notes |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let outcomes = match &r.outcomes {
            Ok(o) => o,
            Err(why) => {
                let _ = writeln!(
                    s,
                    "| {} | — | 0 | not run: {} | | | | | |",
                    r.name,
                    why.replace('|', "/").replace('\n', " ")
                );
                continue;
            }
        };
        let mut by_fault: BTreeMap<Fault, Vec<&Outcome>> = BTreeMap::new();
        for o in outcomes {
            by_fault.entry(o.fault).or_default().push(o);
        }
        for (fault, os) in by_fault {
            let _ = writeln!(s, "{}", row(&r.name, fault, &os));
        }
    }
    s.push_str(LEGEND);
    s
}

fn row(stack: &str, fault: Fault, os: &[&Outcome]) -> String {
    let mut answered: Vec<Duration> = os.iter().filter_map(|o| o.first_answer).collect();
    answered.sort();
    let unanswered = os.len() - answered.len();
    let first = if answered.is_empty() {
        "none".to_string()
    } else {
        let mid = answered[answered.len() / 2];
        format!("{} / {} / {}", ms(answered[0]), ms(mid), ms(answered[answered.len() - 1]))
    };
    let first = if unanswered > 0 { format!("{first} ({unanswered} never, ≥ 45 s)") } else { first };
    let max_gap = os.iter().map(|o| o.max_gap).max().unwrap_or_default();
    let two = os.iter().map(|o| o.two_holders).max().unwrap_or_default();
    let most = os.iter().map(|o| o.most_holders).max().unwrap_or_default();
    let (new_failed, new_calls): (u64, u64) = os.iter().fold((0, 0), |(f, n), o| (f + o.new_failed, n + o.new_calls));
    let (held_left, held): (u64, u64) = os.iter().fold((0, 0), |(f, n), o| (f + o.held_unended, n + o.held_calls));
    let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
    for o in os {
        *paths.entry(o.path.as_str()).or_default() += 1;
    }
    let mut notes: Vec<String> = paths.iter().map(|(p, n)| format!("`{p}` ×{n}")).collect();
    for o in os.iter().filter_map(|o| o.note.as_deref()) {
        if !notes.iter().any(|n| n == o) {
            notes.push(o.to_string());
        }
    }
    format!(
        "| {stack} | {} | {} | {first} | {} | {}, {most} | {new_failed} / {new_calls} | {held_left} / {held} | {} |",
        fault.label(),
        os.len(),
        ms(max_gap),
        ms(two),
        notes.join("; ")
    )
}

const LEGEND: &str = "
Each trial: a fault on the node holding the VIP, an 8 s window (longer if no phone was answered yet, 45 s at
most), then its recovery on the same node with the same window. *First answer*: from the fault to the first 200
to an OPTIONS sent to the VIP at or after it (one every 20 ms from the phones' namespace; a node that still holds
the VIP and answers counts). *Longest gap*: the longest stretch without a 200 in the window. *Two VIP holders*:
the longest time in one trial's window with the address configured on two nodes at once (sampled every 20 ms),
and the most at once; a cut-off node's copy counts (the phones cannot reach it, but it is a second holder the
moment the partition heals), and so does the copy a crashed HA daemon leaves behind (it answers ARP). *New calls*: SIPp at 20 calls/s (held 0.2 s) from 1 s before to 8 s after the event;
failed = not completed (INVITE, ACK, BYE answered). *Held calls*: 20 calls set up before the event, each ending
with a BYE 0.5-2.5 s after it; not ended = no 200 to that BYE despite SIPp's retransmissions. *VIP path*: the
holder sets in the window, `X` the faulted node, `A`/`B` the others in order of appearance, `-` nobody; `X>A`
a clean move, `X>X+A` a second holder beside the first.
";
