//! A loss curve as a PNG, with no plotting or image dependency.
//!
//! The chart is drawn into an RGB buffer (axes, grid, the curve, and numeric labels in a 3x5
//! pixel font scaled up) and encoded as a PNG with stored (uncompressed) deflate blocks, which
//! every PNG reader accepts. Small and dependency-free; good enough for a training curve.

/// Renders `(step, loss)` points as a `width x height` PNG.
pub fn loss_curve_png(points: &[(f64, f64)], width: usize, height: usize) -> Vec<u8> {
    let mut c = Canvas { w: width, h: height, px: vec![255; width * height * 3] };
    let (l, r, t, b) = (70usize, width - 20, 20usize, height - 40);
    // Axes.
    c.line(l as f64, b as f64, r as f64, b as f64, [0, 0, 0]);
    c.line(l as f64, t as f64, l as f64, b as f64, [0, 0, 0]);
    if points.is_empty() {
        return c.png();
    }
    let (x0, x1) =
        (points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min), points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max));
    let (y0, y1) =
        (points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min), points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max));
    let (x1, y1) = (if x1 > x0 { x1 } else { x0 + 1.0 }, if y1 > y0 { y1 } else { y0 + 1.0 });
    let px = |x: f64| l as f64 + (x - x0) / (x1 - x0) * (r - l) as f64;
    let py = |y: f64| b as f64 - (y - y0) / (y1 - y0) * (b - t) as f64;
    for k in 1..4 {
        let y = t + (b - t) * k / 4;
        c.line(l as f64, y as f64, r as f64, y as f64, [225, 225, 225]);
    }
    for w in points.windows(2) {
        c.line(px(w[0].0), py(w[0].1), px(w[1].0), py(w[1].1), [31, 119, 180]);
    }
    if points.len() == 1 {
        c.line(px(points[0].0) - 2.0, py(points[0].1), px(points[0].0) + 2.0, py(points[0].1), [31, 119, 180]);
    }
    c.text(&format!("{y1:.3}"), 4, t.saturating_sub(5), 2);
    c.text(&format!("{y0:.3}"), 4, b.saturating_sub(5), 2);
    c.text(&format!("{x0:.0}"), l, b + 10, 2);
    let last = format!("{x1:.0}");
    c.text(&last, r.saturating_sub(last.len() * 8), b + 10, 2);
    c.png()
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

/// 3x5 glyphs for digits, '.', '-' and 'e', one row per 3 bits.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => [0; 5],
    }
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, rgb: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let f = i as f64 / n as f64;
            let (x, y) = ((x0 + (x1 - x0) * f).round() as i64, (y0 + (y1 - y0) * f).round() as i64);
            self.set(x, y, rgb);
            self.set(x, y + 1, rgb);
        }
    }

    fn text(&mut self, s: &str, x: usize, y: usize, scale: usize) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                let px = x + k * 4 * scale + col * scale + dx;
                                let py = y + row * scale + dy;
                                self.set(px as i64, py as i64, [60, 60, 60]);
                            }
                        }
                    }
                }
            }
        }
    }

    fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks(self.w * 3) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &zlib_stored(&raw));
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, ty: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = ty.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65535).collect();
    for (i, b) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        out.extend_from_slice(&(b.len() as u16).to_le_bytes());
        out.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        out.extend_from_slice(b);
    }
    let (mut a, mut bsum) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        bsum = (bsum + a) % 65521;
    }
    out.extend_from_slice(&((bsum << 16) | a).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_valid_png() {
        let png = loss_curve_png(&[(1.0, 3.2), (2.0, 2.9), (3.0, 2.5)], 200, 120);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        // IHDR declares the size.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 200);
        assert!(png.len() > 200 * 120 * 3);
    }
}
