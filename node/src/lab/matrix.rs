//! The pod-to-pod reachability matrix: one `ping -c1 -W1` from every pod to every other pod, per
//! family, run from the source pod's namespace on a pool of threads; rendering is pure.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::sys;
use crate::datastore::IpFamily;

/// At most this many pings run at once.
const PARALLEL: usize = 64;

/// A pod as the matrix sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Column/row label, e.g. `n1p2`.
    pub label: String,
    pub netns: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// Results for one family: `cells[from][to]`, `None` on the diagonal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub family: IpFamily,
    pub cells: Vec<Vec<Option<bool>>>,
}

impl Grid {
    /// (reachable pairs, pairs).
    pub fn count(&self) -> (usize, usize) {
        let all = self.cells.iter().flatten().flatten();
        (all.clone().filter(|ok| **ok).count(), all.count())
    }
}

/// Pings every ordered pair in both families; pairs that fail are tried up to `retries` more
/// times (a first packet can be lost while neighbours resolve), unless most pairs fail: then the
/// lab is broken, not flaky, and each retry would cost a second per pair.
pub fn ping_all(pods: &[Target], retries: usize) -> Vec<Grid> {
    let n = pods.len();
    let mut grids: Vec<Grid> = [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .map(|family| Grid {
            family,
            cells: (0..n)
                .map(|i| (0..n).map(|j| (i != j).then_some(false)).collect())
                .collect(),
        })
        .collect();
    for round in 0..=retries {
        let jobs: Vec<(usize, usize, usize)> = grids
            .iter()
            .enumerate()
            .flat_map(|(g, grid)| {
                grid.cells.iter().enumerate().flat_map(move |(i, row)| {
                    row.iter()
                        .enumerate()
                        .filter(|(_, c)| **c == Some(false))
                        .map(move |(j, _)| (g, i, j))
                })
            })
            .collect();
        let total = 2 * n * n.saturating_sub(1);
        if jobs.is_empty() || (round > 0 && jobs.len() * 4 > total) {
            break;
        }
        let next = AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(jobs.len()) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(g, i, j)) = jobs.get(k) else {
                        break;
                    };
                    let dst = if g == 0 { pods[j].v4 } else { pods[j].v6 };
                    if ping(&pods[i].netns, dst) {
                        done.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((g, i, j));
                    }
                });
            }
        });
        for (g, i, j) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
            grids[g].cells[i][j] = Some(true);
        }
    }
    grids
}

fn ping(netns: &str, dst: IpAddr) -> bool {
    let dst = dst.to_string();
    let argv = ["ping", "-c1", "-W1", "-n", "-q", &dst];
    sys::exec(netns, &argv, Duration::from_secs(5)).is_ok_and(|o| o.status.success())
}

/// The grid as text: a title, a header row of labels, one row per source pod (`✓` reachable,
/// `✗` not, `·` itself), then `N/M pod pairs reachable over IPv4`.
pub fn render(labels: &[String], grid: &Grid) -> String {
    let w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) + 1;
    let mut s = format!("{} (row: from, column: to)\n{:w$}", grid.family, "");
    for l in labels {
        s += &format!("{l:>w$}");
    }
    s.push('\n');
    for (i, row) in grid.cells.iter().enumerate() {
        s += &format!("{:<w$}", labels.get(i).map_or("?", String::as_str));
        for c in row {
            let mark = match c {
                None => "·",
                Some(true) => "✓",
                Some(false) => "✗",
            };
            s += &format!("{mark:>w$}");
        }
        s.push('\n');
    }
    let (ok, all) = grid.count();
    s + &format!("{ok}/{all} pod pairs reachable over {}\n", grid.family)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (1..=n).map(|k| format!("n{k}p1")).collect()
    }

    #[test]
    fn renders_a_grid_and_a_summary() {
        let g = Grid {
            family: IpFamily::V4,
            cells: vec![
                vec![None, Some(true), Some(false)],
                vec![Some(true), None, Some(true)],
                vec![Some(true), Some(true), None],
            ],
        };
        assert_eq!(g.count(), (5, 6));
        let text = render(&labels(3), &g);
        let expected = "\
IPv4 (row: from, column: to)
      n1p1 n2p1 n3p1
n1p1     ·    ✓    ✗
n2p1     ✓    ·    ✓
n3p1     ✓    ✓    ·
5/6 pod pairs reachable over IPv4
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn one_pod_has_no_pairs() {
        let g = Grid {
            family: IpFamily::V6,
            cells: vec![vec![None]],
        };
        assert_eq!(g.count(), (0, 0));
        assert!(render(&labels(1), &g).ends_with("0/0 pod pairs reachable over IPv6\n"));
    }

    #[test]
    fn no_pods_no_pings() {
        let grids = ping_all(&[], 1);
        assert_eq!(grids.len(), 2);
        assert!(grids.iter().all(|g| g.cells.is_empty()));
    }
}
