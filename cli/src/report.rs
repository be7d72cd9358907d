//! Formatting for people: sizes, durations, aligned tables.

use std::time::Duration;

/// `n` bytes in the largest binary unit that keeps a digit before the point.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// A duration in ms with one decimal (or s above ten seconds).
pub fn duration(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

/// A table: a header row and rows of cells, printed with columns aligned (numbers to the right).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, without a trailing newline.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let width: Vec<usize> = (0..n)
            .map(|c| self.rows.iter().map(|r| r[c].chars().count()).chain([self.header[c].len()]).max().unwrap_or(0))
            .collect();
        // A column is numeric when every cell starts with a digit (units may follow).
        let numeric: Vec<bool> = (0..n)
            .map(|c| {
                !self.rows.is_empty() && self.rows.iter().all(|r| r[c].starts_with(|ch: char| ch.is_ascii_digit()))
            })
            .collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(
                    |(c, s)| {
                        if numeric[c] { format!("{s:>w$}", w = width[c]) } else { format!("{s:<w$}", w = width[c]) }
                    },
                )
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = vec![line(&self.header)];
        out.push(width.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  "));
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(Duration::from_micros(1500)), "1.5 ms");
        assert_eq!(duration(Duration::from_secs(12)), "12.0 s");
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let mut t = Table::new(&["name", "count"]);
        t.row(vec!["a".into(), "5".into()]);
        t.row(vec!["longer".into(), "123".into()]);
        assert_eq!(t.render(), "name    count\n------  -----\na           5\nlonger    123");
    }
}
