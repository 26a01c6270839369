//! Length-limited canonical Huffman codes over a byte alphabet, written least significant
//! bit first and decoded through a lookup table of `1 << MAX_LEN` entries (one load per
//! symbol, no tree walk): the entropy stage of `delta_exact`'s context-coded layout.
//!
//! Codes are canonical (as in DEFLATE, RFC 1951 §3.2.2): only the lengths travel, and both
//! sides derive the same codes from them. They are stored bit-reversed so that the next
//! `MAX_LEN` bits of an LSB-first stream index the decode table directly.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The longest code: decode tables have `1 << MAX_LEN` entries.
pub const MAX_LEN: u32 = 10;

/// Huffman code lengths for `freq` (0 for a symbol that never occurs), none longer than
/// [`MAX_LEN`]. Where the optimal code is longer, the frequencies are halved (rounding up,
/// so no used symbol drops out) until it fits: a small loss on the rarest symbols only.
/// With fewer than two used symbols every length is 0 (a one-symbol alphabet needs no
/// bits; callers store that symbol themselves).
pub fn code_lengths(freq: &[u64]) -> Vec<u8> {
    let mut f = freq.to_vec();
    loop {
        let lengths = huffman(&f);
        if lengths.iter().all(|&l| u32::from(l) <= MAX_LEN) {
            return lengths;
        }
        for x in f.iter_mut().filter(|x| **x > 0) {
            *x = x.div_ceil(2);
        }
    }
}

/// Unlimited Huffman lengths (ties broken by symbol, so encoders agree run to run).
fn huffman(freq: &[u64]) -> Vec<u8> {
    let mut lengths = vec![0u8; freq.len()];
    let used: Vec<usize> = (0..freq.len()).filter(|&s| freq[s] > 0).collect();
    if used.len() < 2 {
        return lengths;
    }
    // Nodes: the leaves first, then each merge; parent links give the depths.
    let mut parent = vec![usize::MAX; 2 * used.len() - 1];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = used
        .iter()
        .enumerate()
        .map(|(node, &s)| Reverse((freq[s], node)))
        .collect();
    let mut next = used.len();
    while let (Some(Reverse((wa, a))), Some(Reverse((wb, b)))) = (heap.pop(), heap.pop()) {
        parent[a] = next;
        parent[b] = next;
        heap.push(Reverse((wa + wb, next)));
        next += 1;
    }
    // Depths from the root down (parents are created after their children).
    let mut depth = vec![0u8; parent.len()];
    for node in (0..parent.len() - 1).rev() {
        depth[node] = depth[parent[node]].saturating_add(1);
    }
    for (node, &s) in used.iter().enumerate() {
        lengths[s] = depth[node];
    }
    lengths
}

/// The canonical codes of `lengths`, bit-reversed for an LSB-first stream (a symbol of
/// length 0 gets code 0 and is never written).
pub fn codes(lengths: &[u8]) -> Vec<u32> {
    let mut count = [0u32; MAX_LEN as usize + 1];
    for &l in lengths {
        count[usize::from(l).min(MAX_LEN as usize)] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; MAX_LEN as usize + 2];
    let mut code = 0u32;
    for l in 1..=MAX_LEN as usize {
        code = (code + count[l - 1]) << 1;
        next[l] = code;
    }
    lengths
        .iter()
        .map(|&l| {
            if l == 0 {
                return 0;
            }
            let l = usize::from(l);
            let c = next[l];
            next[l] += 1;
            c.reverse_bits() >> (32 - l)
        })
        .collect()
}

/// Whether `lengths` describe a complete prefix code within [`MAX_LEN`] (every table entry
/// filled exactly once): what a decoder checks before trusting a stored table.
pub fn is_complete(lengths: &[u8]) -> bool {
    let mut kraft = 0u64;
    for &l in lengths {
        if u32::from(l) > MAX_LEN {
            return false;
        }
        if l > 0 {
            kraft += 1 << (MAX_LEN - u32::from(l));
        }
    }
    kraft == 1 << MAX_LEN
}

/// Fills `table` (`1 << MAX_LEN` entries) so that the entry at the next `MAX_LEN` bits of
/// the stream is `entry(symbol, length)` of the code that starts there. `lengths` must be
/// complete ([`is_complete`]).
pub fn fill_table(lengths: &[u8], table: &mut [u32], entry: impl Fn(usize, u32) -> u32) {
    for (s, (&l, c)) in lengths.iter().zip(codes(lengths)).enumerate() {
        if l == 0 {
            continue;
        }
        let e = entry(s, u32::from(l));
        let step = 1usize << l;
        let mut at = c as usize;
        while at < table.len() {
            table[at] = e;
            at += step;
        }
    }
}

/// An LSB-first bit writer.
#[derive(Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Appends the low `bits` bits of `value` (at most 32).
    #[inline]
    pub fn put(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32);
        if bits == 0 {
            return;
        }
        self.acc |= (u64::from(value) & ((1u64 << bits) - 1)) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Bits written so far.
    pub fn bits(&self) -> u64 {
        self.bytes.len() as u64 * 8 + u64::from(self.n)
    }

    /// The bytes, the last one padded with zero bits.
    pub fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_optimal_complete_and_limited() {
        // Dyadic frequencies get their exact lengths.
        let l = code_lengths(&[8, 4, 2, 1, 1, 0]);
        assert_eq!(l, vec![1, 2, 3, 4, 4, 0]);
        assert!(is_complete(&l));
        // A geometric tail would need codes of 40 bits: limited, still complete.
        let freq: Vec<u64> = (0..40).map(|i| 1u64 << (40 - i)).collect();
        let l = code_lengths(&freq);
        assert!(l.iter().all(|&x| (1..=MAX_LEN as u8).contains(&x)), "{l:?}");
        assert!(is_complete(&l));
        // Fewer than two symbols: no bits.
        assert_eq!(code_lengths(&[0, 5, 0]), vec![0, 0, 0]);
        assert!(
            !is_complete(&[1, 0]),
            "one code of one bit leaves half the table empty"
        );
        assert!(!is_complete(&[1, 1, 1]), "over-full");
    }

    #[test]
    fn codes_round_trip_through_the_table() {
        let freq: Vec<u64> = (0..256u64)
            .map(|s| (s * 7919) % 97 + (s % 3) * 50)
            .collect();
        let lengths = code_lengths(&freq);
        assert!(is_complete(&lengths));
        let codes = codes(&lengths);
        let mut table = vec![u32::MAX; 1 << MAX_LEN];
        fill_table(&lengths, &mut table, |s, l| (s as u32) << 8 | l);
        assert!(table.iter().all(|&e| e != u32::MAX), "every entry filled");
        let msg: Vec<usize> = (0..5000)
            .map(|i| (i * 31 + i / 7) % 256)
            .filter(|&s| lengths[s] > 0)
            .collect();
        let mut w = BitWriter::default();
        for &s in &msg {
            w.put(codes[s], u32::from(lengths[s]));
        }
        let bits = w.bits();
        let mut bytes = w.finish();
        bytes.extend_from_slice(&[0; 8]);
        let mut pos = 0usize;
        for &s in &msg {
            let word = u64::from_le_bytes(bytes[pos / 8..pos / 8 + 8].try_into().expect("8 bytes"));
            let e = table[((word >> (pos % 8)) & ((1 << MAX_LEN) - 1)) as usize];
            assert_eq!((e >> 8) as usize, s);
            pos += (e & 0xff) as usize;
        }
        assert_eq!(pos as u64, bits);
    }
}
