//! Chromaprint's fingerprint calculator for algorithm 2 (`TEST2`, fpcalc's
//! default): an integral image of the chroma rows, cumulative from the first
//! row as Chromaprint keeps it, and 16 Haar-like classifiers over a window of
//! 16 rows, each quantised to 2 bits in Gray code (docs/audio.md).

use std::collections::VecDeque;

use super::chroma::Row;

/// One classifier: filter type, first chroma column, height in columns,
/// width in rows, and the quantizer's three thresholds.
struct Classifier {
    kind: u8,
    y: usize,
    height: usize,
    width: usize,
    thresholds: [f64; 3],
}

const fn c(
    kind: u8,
    y: usize,
    height: usize,
    width: usize,
    t0: f64,
    t1: f64,
    t2: f64,
) -> Classifier {
    Classifier {
        kind,
        y,
        height,
        width,
        thresholds: [t0, t1, t2],
    }
}

/// `kChromaprintClassifiersTest2`, in the order of their bits (the first in
/// the top two bits).
const CLASSIFIERS: [Classifier; 16] = [
    c(0, 4, 3, 15, 1.98215, 2.35817, 2.63523),
    c(4, 4, 6, 15, -1.03809, -0.651211, -0.282167),
    c(1, 0, 4, 16, -0.298702, 0.119262, 0.558497),
    c(3, 8, 2, 12, -0.105439, 0.0153946, 0.135898),
    c(3, 4, 4, 8, -0.142891, 0.0258736, 0.200632),
    c(4, 0, 3, 5, -0.826319, -0.590612, -0.368214),
    c(1, 2, 2, 9, -0.557409, -0.233035, 0.0534525),
    c(2, 7, 3, 4, -0.0646826, 0.00620476, 0.0784847),
    c(2, 6, 2, 16, -0.192387, -0.029699, 0.215855),
    c(2, 1, 3, 2, -0.0397818, -0.00568076, 0.0292026),
    c(5, 10, 1, 15, -0.53823, -0.369934, -0.190235),
    c(3, 6, 2, 10, -0.124877, 0.0296483, 0.139239),
    c(2, 1, 1, 14, -0.101475, 0.0225617, 0.231971),
    c(3, 5, 6, 4, -0.0799915, -0.00729616, 0.063262),
    c(1, 9, 2, 12, -0.272556, 0.019424, 0.302559),
    c(3, 4, 2, 14, -0.164292, -0.0321188, 0.0846339),
];

/// Rows a fingerprint item spans.
const SPAN: usize = 16;
const GRAY: [u32; 4] = [0, 1, 3, 2];

/// The integral image's last rows (cumulative sums) and the items so far.
#[derive(Debug, Default)]
pub(crate) struct Calculator {
    rows: VecDeque<Row>,
    /// Index of `rows[0]` among all rows.
    first: usize,
    count: usize,
}

impl Calculator {
    /// Adds one chroma row; returns the fingerprint item it completes.
    pub fn push(&mut self, row: &Row) -> Option<u32> {
        let mut cumulative = [0f64; 12];
        let mut s = 0.0;
        for (i, (dst, &v)) in cumulative.iter_mut().zip(row).enumerate() {
            s = if i == 0 { v } else { s + v };
            *dst = s;
        }
        if let Some(prev) = self.rows.back() {
            for (dst, p) in cumulative.iter_mut().zip(prev) {
                *dst += p;
            }
        }
        if self.rows.len() == SPAN + 1 {
            self.rows.pop_front();
            self.first += 1;
        }
        self.rows.push_back(cumulative);
        self.count += 1;
        if self.count < SPAN {
            return None;
        }
        let offset = self.count - SPAN;
        let mut bits = 0u32;
        for cl in &CLASSIFIERS {
            let v = self.filter(cl, offset);
            let [t0, t1, t2] = cl.thresholds;
            let q = if v < t1 {
                usize::from(v >= t0)
            } else if v < t2 {
                2
            } else {
                3
            };
            bits = (bits << 2) | GRAY[q];
        }
        Some(bits)
    }

    fn row(&self, r: usize) -> &Row {
        &self.rows[r - self.first]
    }

    /// Sum of rows `r1..r2`, columns `c1..c2`, from the integral image.
    fn area(&self, r1: usize, c1: usize, r2: usize, c2: usize) -> f64 {
        if r1 == r2 || c1 == c2 {
            return 0.0;
        }
        let b = self.row(r2 - 1);
        if r1 == 0 {
            return if c1 == 0 {
                b[c2 - 1]
            } else {
                b[c2 - 1] - b[c1 - 1]
            };
        }
        let a = self.row(r1 - 1);
        if c1 == 0 {
            b[c2 - 1] - a[c2 - 1]
        } else {
            b[c2 - 1] - a[c2 - 1] - b[c1 - 1] + a[c1 - 1]
        }
    }

    fn filter(&self, cl: &Classifier, x: usize) -> f64 {
        let (y, w, h) = (cl.y, cl.width, cl.height);
        let sl = |a: f64, b: f64| ((1.0 + a) / (1.0 + b)).ln();
        match cl.kind {
            0 => sl(self.area(x, y, x + w, y + h), 0.0),
            1 => {
                let h2 = h / 2;
                sl(
                    self.area(x, y + h2, x + w, y + h),
                    self.area(x, y, x + w, y + h2),
                )
            }
            2 => {
                let w2 = w / 2;
                sl(
                    self.area(x + w2, y, x + w, y + h),
                    self.area(x, y, x + w2, y + h),
                )
            }
            3 => {
                let (w2, h2) = (w / 2, h / 2);
                let a = self.area(x, y + h2, x + w2, y + h) + self.area(x + w2, y, x + w, y + h2);
                let b = self.area(x, y, x + w2, y + h2) + self.area(x + w2, y + h2, x + w, y + h);
                sl(a, b)
            }
            4 => {
                let h3 = h / 3;
                sl(
                    self.area(x, y + h3, x + w, y + 2 * h3),
                    self.area(x, y, x + w, y + h3) + self.area(x, y + 2 * h3, x + w, y + h),
                )
            }
            _ => {
                let w3 = w / 3;
                sl(
                    self.area(x + w3, y, x + 2 * w3, y + h),
                    self.area(x, y, x + w3, y + h) + self.area(x + 2 * w3, y, x + w, y + h),
                )
            }
        }
    }
}
