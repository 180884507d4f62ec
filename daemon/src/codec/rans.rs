//! A byte-oriented rANS entropy coder (32-bit state, renormalised a byte at a time), after
//! Fabian Giesen's public-domain description. Every step names its own scale (probability
//! precision in bits, at most [`MAX_SCALE`]), so static distributions at 12 bits and raw bit
//! fields share one stream.
//!
//! rANS encodes in reverse: the encoder collects steps and writes them last to first, the
//! decoder reads them first to last. A stream ends with the decoder back in the encoder's
//! initial state having consumed every byte; [`Decoder::finish`] checks both, so a corrupted
//! payload is almost always reported instead of decoding to something else.

use crate::error::{Error, Result};

/// Lower bound of the normalised state interval [L, 256 L). 2^15 rather than the usual 2^23
/// makes the final state (written with every record) 3 bytes instead of 4; with scales of at
/// most 12 bits the coding loss stays small (measured by the codec's evaluation harness).
const L: u32 = 1 << 15;
/// Largest scale a step may use.
pub const MAX_SCALE: u32 = 12;
/// Bytes of the final state.
const STATE_BYTES: usize = 3;

/// One coding step: a symbol occupying [start, start + freq) out of 2^scale.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub start: u32,
    pub freq: u32,
    pub scale: u32,
}

/// Collects steps in order, then produces the byte stream.
#[derive(Default)]
pub struct Encoder {
    steps: Vec<Step>,
    rev: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder { steps: Vec::with_capacity(256), rev: Vec::with_capacity(256) }
    }

    pub fn clear(&mut self) {
        self.steps.clear();
    }

    #[inline]
    pub fn put(&mut self, start: u32, freq: u32, scale: u32) {
        debug_assert!(freq > 0 && scale <= MAX_SCALE && start + freq <= 1 << scale);
        self.steps.push(Step { start, freq, scale });
    }

    /// `bits` raw bits of `v` (each value equally likely), in chunks of at most 12.
    #[inline]
    pub fn put_bits(&mut self, mut v: u64, mut bits: u32) {
        while bits > 0 {
            let n = bits.min(12);
            self.put((v & ((1 << n) - 1)) as u32, 1, n);
            v >>= n;
            bits -= n;
        }
    }

    /// Append the encoded stream to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rcp = reciprocals();
        let rev = &mut self.rev;
        rev.clear();
        let mut x: u32 = L;
        for s in self.steps.iter().rev() {
            let x_max = ((L >> s.scale) << 8) * s.freq;
            while x >= x_max {
                rev.push(x as u8);
                x >>= 8;
            }
            // x / freq by multiplication: a division was a sixth of the encoder's time.
            let q = ((x as u64 * rcp[s.freq as usize]) >> 40) as u32;
            debug_assert_eq!(q, x / s.freq);
            x = (q << s.scale) + (x - q * s.freq) + s.start;
        }
        rev.extend_from_slice(&x.to_le_bytes()[..STATE_BYTES]);
        out.extend(rev.iter().rev());
        self.steps.clear();
    }
}

/// ceil(2^40 / f) for every frequency f in 1..=4096: for x < 2^23 (the state before a step)
/// `(x * r) >> 40` is exactly x / f (the rounding error, below 2^-17, never reaches the next
/// integer because x / f is at least 1/f <= 2^-12 away from it).
fn reciprocals() -> &'static [u64; 4097] {
    static R: std::sync::OnceLock<Box<[u64; 4097]>> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        let mut r = Box::new([0u64; 4097]);
        for (f, v) in r.iter_mut().enumerate().skip(1) {
            *v = (1u64 << 40).div_ceil(f as u64);
        }
        r
    })
}

/// Reads a stream produced by [`Encoder::finish`]. Never panics: past the end it reads
/// zeros and [`Decoder::finish`] reports the stream as corrupt.
pub struct Decoder<'a> {
    x: u32,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        let mut d = Decoder { x: 0, buf, pos: 0 };
        for _ in 0..STATE_BYTES {
            d.x = (d.x << 8) | d.byte();
        }
        d
    }

    #[inline]
    fn byte(&mut self) -> u32 {
        let b = self.buf.get(self.pos).copied().unwrap_or(0) as u32;
        self.pos += 1;
        b
    }

    /// The slot of the next step at `scale` (which symbol it is, before `advance`).
    #[inline]
    pub fn peek(&self, scale: u32) -> u32 {
        self.x & ((1 << scale) - 1)
    }

    #[inline]
    pub fn advance(&mut self, start: u32, freq: u32, scale: u32) {
        let mask = (1u32 << scale) - 1;
        let mut x =
            freq.wrapping_mul(self.x >> scale).wrapping_add(self.x & mask).wrapping_sub(start);
        // A step of at most 12 bits needs at most two bytes; taking them without a branch
        // saves a mispredicted loop exit per symbol (decoding is branch-bound, not memory-
        // bound: measured in examples/codec_eval.rs).
        for _ in 0..2 {
            let need = (x < L) as usize;
            let b = self.buf.get(self.pos).copied().unwrap_or(0) as u32;
            x = if need == 1 { (x << 8) | b } else { x };
            self.pos += need;
        }
        if x < L {
            // Only corrupt input gets here: stop, and make finish() report it.
            x = L;
            self.pos = self.buf.len() + 16;
        }
        self.x = x;
    }

    #[inline]
    pub fn get_bits(&mut self, mut bits: u32) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while bits > 0 {
            let n = bits.min(12);
            let s = self.peek(n);
            self.advance(s, 1, n);
            v |= (s as u64) << shift;
            shift += n;
            bits -= n;
        }
        v
    }

    /// Whether the stream was consumed exactly (a well-formed end).
    pub fn finish(&self) -> Result<()> {
        if self.x == L && self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Error::Corrupted(format!(
                "compressed record does not end cleanly (state {:#x}, {} of {} bytes read)",
                self.x,
                self.pos,
                self.buf.len()
            )))
        }
    }

    /// Whether reading has run past the end (a corrupt stream: stop decoding).
    #[inline]
    pub fn overrun(&self) -> bool {
        self.pos > self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip() {
        let mut e = Encoder::new();
        let steps: Vec<(u32, u32, u32)> =
            (0..5000u32).map(|i| ((i * 7) % 4000, 1 + (i * 13) % 96, 12)).collect();
        for &(s, f, sc) in &steps {
            e.put(s, f, sc);
        }
        e.put_bits(0xdead_beef_cafe, 48);
        e.put_bits(5, 3);
        let mut out = Vec::new();
        e.finish(&mut out);
        let mut d = Decoder::new(&out);
        for &(s, f, sc) in &steps {
            let slot = d.peek(sc);
            assert!(slot >= s && slot < s + f);
            d.advance(s, f, sc);
        }
        assert_eq!(d.get_bits(48), 0xdead_beef_cafe);
        assert_eq!(d.get_bits(3), 5);
        d.finish().unwrap();
    }

    #[test]
    fn reciprocal_division_is_exact() {
        let r = reciprocals();
        for f in 1..=4096u64 {
            for x in
                [0u64, 1, f - 1, f, f + 1, (1 << 23) - 1, (1 << 23) - f, 12_345_678 % (1 << 23)]
            {
                assert_eq!((x * r[f as usize]) >> 40, x / f, "x {x} f {f}");
            }
            let mut x = f * 7919 % (1 << 23);
            for _ in 0..64 {
                assert_eq!((x * r[f as usize]) >> 40, x / f, "x {x} f {f}");
                x = (x * 2_654_435_761 + 11) % (1 << 23);
            }
        }
    }

    #[test]
    fn empty_stream_is_three_bytes() {
        let mut out = Vec::new();
        Encoder::new().finish(&mut out);
        assert_eq!(out.len(), 3);
        Decoder::new(&out).finish().unwrap();
        assert!(Decoder::new(&out[..2]).finish().is_err());
    }
}
