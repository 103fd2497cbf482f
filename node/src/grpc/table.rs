//! ASCII tables in the layout `calicoctl node status` prints (Go's tablewriter defaults), so the
//! output people and their scripts know carries over:
//!
//! ```text
//! +--------------+-------------------+
//! | PEER ADDRESS |     PEER TYPE     |      headers centred (an odd gap puts the extra space right)
//! +--------------+-------------------+
//! | 10.0.0.2     | node-to-node mesh |      cells left-aligned (or right, per column)
//! +--------------+-------------------+
//! ```
//!
//! A cell wider than [`MAX_CELL_WIDTH`] is wrapped at that width over several lines, choosing the
//! breaks that minimise the sum of squared trailing gaps (the last line is free), and its column is
//! then exactly that wide (wider only when a single word is). No row separators.

/// Cells wider than this are wrapped.
pub const MAX_CELL_WIDTH: usize = 30;
/// Added to the cost of a line that still overflows (a single over-long word).
const OVERFLOW_PENALTY: usize = 100_000;

/// Horizontal alignment of a column's cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: headers, per-column alignment, rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns left-aligned.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        Table {
            align: vec![Align::Left; headers.len()],
            headers,
            rows: vec![],
        }
    }

    /// Right-aligns column `col` (numbers).
    pub fn right(mut self, col: usize) -> Table {
        self.align[col] = Align::Right;
        self
    }

    /// Adds a row; missing cells are empty, extra ones dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, each line ending in `\n`.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let header: Vec<Cell> = self.headers.iter().map(|h| Cell::new(h)).collect();
        let rows: Vec<Vec<Cell>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|c| Cell::new(c)).collect())
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|c| c.width).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.width);
            }
        }
        let border: String = {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&"-".repeat(w + 2));
                s.push('+');
            }
            s.push('\n');
            s
        };
        let mut out = border.clone();
        push_row(&mut out, &header, &widths, |_| Pos::Center);
        out.push_str(&border);
        for r in &rows {
            push_row(&mut out, r, &widths, |i| match self.align[i] {
                Align::Left => Pos::Left,
                Align::Right => Pos::Right,
            });
        }
        if n > 0 {
            out.push_str(&border);
        }
        out
    }
}

enum Pos {
    Left,
    Right,
    Center,
}

/// A cell split into display lines, with the width its column needs.
struct Cell {
    lines: Vec<String>,
    width: usize,
}

impl Cell {
    fn new(text: &str) -> Cell {
        let paras: Vec<&str> = text.split('\n').collect();
        let natural = paras.iter().map(|p| width(p)).max().unwrap_or(0);
        if natural <= MAX_CELL_WIDTH {
            return Cell {
                lines: paras.into_iter().map(String::from).collect(),
                width: natural,
            };
        }
        let lines: Vec<String> = paras.iter().flat_map(|p| wrap(p, MAX_CELL_WIDTH)).collect();
        let longest = lines.iter().map(|l| width(l)).max().unwrap_or(0);
        Cell {
            width: longest.max(MAX_CELL_WIDTH),
            lines,
        }
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn push_row(out: &mut String, cells: &[Cell], widths: &[usize], pos: impl Fn(usize) -> Pos) {
    let height = cells.iter().map(|c| c.lines.len()).max().unwrap_or(1);
    for line in 0..height {
        out.push('|');
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let text = c.lines.get(line).map(String::as_str).unwrap_or("");
            let gap = w.saturating_sub(width(text));
            let (l, r) = match pos(i) {
                Pos::Left => (0, gap),
                Pos::Right => (gap, 0),
                Pos::Center => (gap / 2, gap - gap / 2),
            };
            out.push(' ');
            out.push_str(&" ".repeat(l));
            out.push_str(text);
            out.push_str(&" ".repeat(r));
            out.push_str(" |");
        }
        out.push('\n');
    }
}

/// Wraps `text` at `limit` columns with minimum raggedness: the breaks minimise the sum over all
/// lines but the last of (limit - line width)², a line that overflows costing
/// [`OVERFLOW_PENALTY`] more. Runs of whitespace become one space.
pub fn wrap(text: &str, limit: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = words.len();
    if n == 0 {
        return vec![String::new()];
    }
    // line_width(i, j): words i..j joined by single spaces.
    let mut prefix = vec![0usize; n + 1];
    for (i, w) in words.iter().enumerate() {
        prefix[i + 1] = prefix[i] + width(w);
    }
    let line_width = |i: usize, j: usize| prefix[j] - prefix[i] + (j - i - 1);
    // cost[i]: best cost of words i..n; next[i]: where the line starting at i ends.
    let mut cost = vec![0usize; n + 1];
    let mut next = vec![n; n + 1];
    for i in (0..n).rev() {
        if line_width(i, n) <= limit {
            cost[i] = 0;
            next[i] = n;
            continue;
        }
        cost[i] = usize::MAX;
        for j in i + 1..n {
            let w = line_width(i, j);
            let slack = limit.abs_diff(w);
            let mut c = slack * slack + cost[j];
            if w > limit {
                c += OVERFLOW_PENALTY;
            }
            if c < cost[i] {
                cost[i] = c;
                next[i] = j;
            }
        }
    }
    let mut lines = Vec::new();
    let mut i = 0;
    while i < n {
        lines.push(words[i..next[i]].join(" "));
        i = next[i];
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_like_calico() {
        assert_eq!(
            wrap("Active Socket: Connection refused", 30),
            ["Active Socket: Connection", "refused"]
        );
        // Minimum raggedness, not greedy: "Active Socket: Host is" (gap 8) beats
        // "Active Socket: Host" (gap 11).
        assert_eq!(
            wrap("Active Socket: Host is unreachable", 30),
            ["Active Socket: Host is", "unreachable"]
        );
        assert_eq!(wrap("short", 30), ["short"]);
        assert_eq!(wrap("", 30), [""]);
        // A word longer than the limit overflows its line; the penalty is paid once either way,
        // so the smaller squared gap wins and "a" stays with it.
        let long = "x".repeat(40);
        assert_eq!(
            wrap(&format!("a {long} b"), 30),
            [format!("a {long}"), "b".to_string()]
        );
    }

    #[test]
    fn renders_centered_headers_and_wrapped_cells() {
        let mut t = Table::new(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]);
        t.row([
            "192.168.63.204",
            "node-to-node mesh",
            "start",
            "17:19:38",
            "Active Socket: Connection refused",
        ]);
        t.row(["10.0.0.3", "global", "up", "2019-01-12", "Established"]);
        let want = "\
+----------------+-------------------+-------+------------+--------------------------------+
|  PEER ADDRESS  |     PEER TYPE     | STATE |   SINCE    |              INFO              |
+----------------+-------------------+-------+------------+--------------------------------+
| 192.168.63.204 | node-to-node mesh | start | 17:19:38   | Active Socket: Connection      |
|                |                   |       |            | refused                        |
| 10.0.0.3       | global            | up    | 2019-01-12 | Established                    |
+----------------+-------------------+-------+------------+--------------------------------+
";
        assert_eq!(t.render(), want);
    }

    #[test]
    fn right_alignment_and_short_rows() {
        let mut t = Table::new(["CIDR", "USED"]).right(1);
        t.row(["10.244.0.0/26", "3"]);
        t.row(["10.244.0.64/26"]);
        let want = "\
+----------------+------+
|      CIDR      | USED |
+----------------+------+
| 10.244.0.0/26  |    3 |
| 10.244.0.64/26 |      |
+----------------+------+
";
        assert_eq!(t.render(), want);
    }
}
