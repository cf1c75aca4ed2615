//! Tree nodes as stored (`Format::node_encoding`): `tag:u8` (0 leaf, 1 branch),
//! `count:varint`, then per entry `klen:varint key` followed by `vlen:varint value` (leaf) or a
//! 32-byte child hash (branch). A branch entry's key is the first key of its child. A node is
//! stored under the BLAKE3 hash of its encoding.

use crate::error::{FsError, FsResult};
use crate::format::hash::Hash;

/// Nodes are split near this size (it shapes trees, not how they are read).
pub const TARGET_NODE_BYTES: usize = 8 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Leaf(Vec<(Vec<u8>, Vec<u8>)>),
    Branch(Vec<(Vec<u8>, Hash)>),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> FsResult<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or_else(|| FsError::corrupt("short node"))?;
            self.0 = rest;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(FsError::corrupt("bad varint"))
    }

    fn bytes(&mut self, n: usize) -> FsResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(FsError::corrupt("short node"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}

impl Node {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(TARGET_NODE_BYTES + 256);
        match self {
            Node::Leaf(entries) => {
                out.push(0);
                put_varint(&mut out, entries.len() as u64);
                for (k, v) in entries {
                    put_varint(&mut out, k.len() as u64);
                    out.extend_from_slice(k);
                    put_varint(&mut out, v.len() as u64);
                    out.extend_from_slice(v);
                }
            }
            Node::Branch(children) => {
                out.push(1);
                put_varint(&mut out, children.len() as u64);
                for (k, h) in children {
                    put_varint(&mut out, k.len() as u64);
                    out.extend_from_slice(k);
                    out.extend_from_slice(&h.0);
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> FsResult<Node> {
        let mut r = Reader(bytes);
        let tag = r.bytes(1)?[0];
        let n = r.varint()? as usize;
        let node = match tag {
            0 => {
                let mut entries = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let kl = r.varint()? as usize;
                    let k = r.bytes(kl)?.to_vec();
                    let vl = r.varint()? as usize;
                    entries.push((k, r.bytes(vl)?.to_vec()));
                }
                Node::Leaf(entries)
            }
            1 => {
                let mut children = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let kl = r.varint()? as usize;
                    let k = r.bytes(kl)?.to_vec();
                    let h = Hash::from_slice(r.bytes(32)?).expect("32 bytes");
                    children.push((k, h));
                }
                if children.is_empty() {
                    return Err(FsError::corrupt("empty branch"));
                }
                Node::Branch(children)
            }
            _ => return Err(FsError::corrupt("bad node tag")),
        };
        if !r.0.is_empty() {
            return Err(FsError::corrupt("trailing bytes in node"));
        }
        Ok(node)
    }

    /// Index of the child whose key range holds `key`.
    pub(crate) fn child_for(children: &[(Vec<u8>, Hash)], key: &[u8]) -> usize {
        children
            .partition_point(|(k, _)| k.as_slice() <= key)
            .saturating_sub(1)
    }
}
