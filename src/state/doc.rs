//! The config document as a persistent JSON tree ([`Node`]) and the RFC 6902
//! ops on it: a clone is O(1), and an op copies only the path it changes.
//!
//! Why a tree of shared nodes rather than a `serde_json::Value`: the lock
//! actor, the config actor and a snapshot each need the document as of some
//! LSN. With a `Value` each of them held its own copy, and every change had
//! to copy or re-apply the whole document. Here they share every node a
//! change did not touch, so a one-key change costs the depth of its path,
//! whatever the document's size.
//!
//! Shape:
//! - Every container sits behind an `Arc`, so cloning a [`Node`] never walks
//!   anything; changing a shared container copies that container only
//!   (`Arc::make_mut`) and the path above it.
//! - A container of up to [`SMALL_MAX`] members is a plain vector, copied
//!   whole when it changes (bounded work, and no B-tree node allocated at
//!   full capacity for a two-key object); a bigger one is an `imbl` vector
//!   or ordered map, copied a few B-tree nodes at a time.
//! - Object keys are kept in byte order, the order serde_json's default
//!   (`BTreeMap`) map gives, so the text clients read is what it was.
//! - Each container caches its compact JSON length and its depth, both exact,
//!   so bounding a `copy` or `move` before it runs, and keeping the
//!   document's length, never walks a subtree. A big container keeps a count
//!   of its members by depth, so removing its deepest member is O(depth).
//!
//! The ops follow json-patch 4's `patch` exactly (same pointer rules, same
//! [`PatchErrorKind`]); a proptest below checks results and errors against it.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::sync::Arc;

use imbl::{OrdMap, Vector};
use json_patch::jsonptr::Pointer;
use json_patch::{PatchErrorKind, PatchOperation};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Number, Value};

/// The most members a container keeps as a plain vector. Past this it
/// becomes an `imbl` structure, whose copy on change is a few nodes of 16 to
/// 64 members; below it a plain vector is as cheap to copy and far smaller.
pub const SMALL_MAX: usize = 32;

/// One JSON value. `Clone` is O(1).
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(Arc<str>),
    Array(Arc<Array>),
    Object(Arc<Object>),
}

/// A JSON array with its compact length and depth.
#[derive(Clone)]
pub struct Array {
    items: Items,
    bytes: usize,
    depth: usize,
}

#[derive(Clone)]
enum Items {
    Small(Vec<Node>),
    Large { items: Vector<Node>, depths: Depths },
}

/// A JSON object, keys in byte order, with its compact length and depth.
#[derive(Clone)]
pub struct Object {
    entries: Entries,
    bytes: usize,
    depth: usize,
}

#[derive(Clone)]
enum Entries {
    /// Sorted by key, keys unique.
    Small(Vec<(Arc<str>, Node)>),
    Large {
        map: OrdMap<Arc<str>, Node>,
        depths: Depths,
    },
}

/// How many members of a big container have each depth, so its own depth
/// stays exact when its deepest member goes, without a scan.
#[derive(Clone, Default)]
struct Depths(Vec<u32>);

impl Depths {
    fn add(&mut self, depth: usize) {
        if self.0.len() <= depth {
            self.0.resize(depth + 1, 0);
        }
        self.0[depth] += 1;
    }

    fn remove(&mut self, depth: usize) {
        self.0[depth] -= 1;
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    /// The container's depth: one above its deepest member.
    fn container_depth(&self) -> usize {
        self.0.len().max(1)
    }
}

/// Counts bytes written, for exact compact JSON lengths of scalars.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The compact JSON length of a number or bool, as serde_json writes it.
fn json_len<T: Serialize + ?Sized>(v: &T) -> usize {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, v).expect("writing a scalar to a counter cannot fail");
    counter.0
}

/// The compact JSON length of a string, quotes included, as serde_json
/// escapes it: `"`, `\` and the five short control escapes take 2 bytes,
/// other control characters 6 (`\u00XX`), everything else itself.
/// Strings can be megabytes, and this runs for every string a change
/// replaces, adds or removes, so the common case (nothing to escape) is one
/// pass with no branch per byte; only a string that needs escapes is walked
/// again to count them.
fn str_json_len(s: &str) -> usize {
    let needs_escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        return 2 + s.len();
    }
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Separators around `n` members: the brackets and `n - 1` commas.
fn frame_len(n: usize) -> usize {
    2 + n.saturating_sub(1)
}

impl Default for Node {
    /// The empty object, the document before any change.
    fn default() -> Self {
        Node::Object(Arc::new(Object::from_sorted(Vec::new())))
    }
}

impl Node {
    /// The compact JSON length. O(1) for containers; a string is scanned.
    pub fn encoded_len(&self) -> usize {
        match self {
            Node::Null => 4,
            Node::Bool(b) => json_len(b),
            Node::Number(n) => json_len(n),
            Node::String(s) => str_json_len(s),
            Node::Array(a) => a.bytes,
            Node::Object(o) => o.bytes,
        }
    }

    /// Nesting depth: a scalar is 0, `{}` and `[]` are 1. O(1).
    pub fn depth(&self) -> usize {
        match self {
            Node::Array(a) => a.depth,
            Node::Object(o) => o.depth,
            _ => 0,
        }
    }

    /// The value at an RFC 6901 pointer (`""` is the whole document), by
    /// serde_json's `Value::pointer` rules.
    pub fn pointer(&self, pointer: &str) -> Option<&Node> {
        if pointer.is_empty() {
            return Some(self);
        }
        pointer
            .strip_prefix('/')?
            .split('/')
            .try_fold(self, |node, token| node.child(&decode(token)))
    }

    fn child(&self, token: &str) -> Option<&Node> {
        match self {
            Node::Object(o) => o.get(token),
            Node::Array(a) => parse_index(token).and_then(|i| a.get(i)),
            _ => None,
        }
    }

    /// Builds the tree for `v`. Recursive: `v` came from serde_json, which
    /// refuses to parse deeper than 128.
    pub fn from_value(v: &Value) -> Node {
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(Arc::from(s.as_str())),
            Value::Array(a) => Node::Array(Arc::new(Array::from_vec(
                a.iter().map(Node::from_value).collect(),
            ))),
            Value::Object(o) => Node::Object(Arc::new(Object::from_sorted(
                o.iter()
                    .map(|(k, v)| (Arc::from(k.as_str()), Node::from_value(v)))
                    .collect(),
            ))),
        }
    }

    /// A `serde_json::Value` copy, for tools and tests. O(size).
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.to_string()),
            Node::Array(a) => Value::Array(a.iter().map(Node::to_value).collect()),
            Node::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// Whether this equals `v` by serde_json's equality (what `test` uses).
    pub fn eq_value(&self, v: &Value) -> bool {
        match (self, v) {
            (Node::Null, Value::Null) => true,
            (Node::Bool(a), Value::Bool(b)) => a == b,
            (Node::Number(a), Value::Number(b)) => a == b,
            (Node::String(a), Value::String(b)) => **a == **b,
            (Node::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_value(y))
            }
            (Node::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| **ka == **kb && va.eq_value(vb))
            }
            _ => false,
        }
    }
}

/// Token unescaping as serde_json's `Value::pointer` does it. Borrowed
/// unless the token has an escape: every read of a path decodes each of
/// its tokens, and two `replace` calls allocated twice per token.
fn decode(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// Array index rules of serde_json's `Value::pointer`.
fn parse_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() != 1) {
        return None;
    }
    s.parse().ok()
}

/// The members of an array, front to back.
pub enum ArrayIter<'a> {
    Small(std::slice::Iter<'a, Node>),
    Large(imbl::vector::Iter<'a, Node, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = &'a Node;

    fn next(&mut self) -> Option<&'a Node> {
        match self {
            ArrayIter::Small(i) => i.next(),
            ArrayIter::Large(i) => i.next(),
        }
    }
}

impl Array {
    fn from_vec(items: Vec<Node>) -> Array {
        let bytes = frame_len(items.len()) + items.iter().map(Node::encoded_len).sum::<usize>();
        let depth = 1 + items.iter().map(Node::depth).max().unwrap_or(0);
        let items = if items.len() <= SMALL_MAX {
            Items::Small(items)
        } else {
            let mut depths = Depths::default();
            items.iter().for_each(|n| depths.add(n.depth()));
            Items::Large {
                items: Vector::from(items),
                depths,
            }
        };
        Array {
            items,
            bytes,
            depth,
        }
    }

    pub fn len(&self) -> usize {
        match &self.items {
            Items::Small(v) => v.len(),
            Items::Large { items, .. } => items.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, index: usize) -> Option<&Node> {
        match &self.items {
            Items::Small(v) => v.get(index),
            Items::Large { items, .. } => items.get(index),
        }
    }

    pub fn iter(&self) -> ArrayIter<'_> {
        match &self.items {
            Items::Small(v) => ArrayIter::Small(v.iter()),
            Items::Large { items, .. } => ArrayIter::Large(items.iter()),
        }
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut Node> {
        match &mut self.items {
            Items::Small(v) => v.get_mut(index),
            Items::Large { items, .. } => items.get_mut(index),
        }
    }

    /// Re-derives the depth after members changed; `gone` and `came` are
    /// the depths of members that left and arrived.
    fn redepth(&mut self, gone: Option<usize>, came: Option<usize>) {
        self.depth = match &mut self.items {
            Items::Small(v) => 1 + v.iter().map(Node::depth).max().unwrap_or(0),
            Items::Large { depths, .. } => {
                came.into_iter().for_each(|d| depths.add(d));
                gone.into_iter().for_each(|d| depths.remove(d));
                depths.container_depth()
            }
        };
    }

    fn insert(&mut self, index: usize, node: Node) {
        let (len, depth) = (node.encoded_len(), node.depth());
        self.bytes += len + usize::from(!self.is_empty());
        match &mut self.items {
            Items::Small(v) if v.len() < SMALL_MAX => {
                v.reserve_exact(1);
                v.insert(index, node);
            }
            Items::Small(v) => {
                let mut depths = Depths::default();
                v.iter().for_each(|n| depths.add(n.depth()));
                let mut items = Vector::from(std::mem::take(v));
                items.insert(index, node);
                self.items = Items::Large { items, depths };
            }
            Items::Large { items, .. } => items.insert(index, node),
        }
        self.redepth(None, Some(depth));
    }

    fn remove(&mut self, index: usize) -> Node {
        let node = match &mut self.items {
            Items::Small(v) => v.remove(index),
            Items::Large { items, .. } => items.remove(index),
        };
        self.bytes -= node.encoded_len() + usize::from(!self.is_empty());
        self.redepth(Some(node.depth()), None);
        node
    }

    /// Replaces the member at `index` (which exists), returning the old one.
    fn set(&mut self, index: usize, node: Node) -> Node {
        let (len, depth) = (node.encoded_len(), node.depth());
        let slot = self.get_mut(index).expect("index checked by the caller");
        let old = std::mem::replace(slot, node);
        self.bytes = self.bytes - old.encoded_len() + len;
        self.redepth(Some(old.depth()), Some(depth));
        old
    }
}

impl Object {
    /// From entries sorted by key with unique keys.
    fn from_sorted(entries: Vec<(Arc<str>, Node)>) -> Object {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        let bytes = frame_len(entries.len())
            + entries
                .iter()
                .map(|(k, v)| str_json_len(k) + 1 + v.encoded_len())
                .sum::<usize>();
        let depth = 1 + entries.iter().map(|(_, v)| v.depth()).max().unwrap_or(0);
        let entries = if entries.len() <= SMALL_MAX {
            Entries::Small(entries)
        } else {
            let mut depths = Depths::default();
            entries.iter().for_each(|(_, v)| depths.add(v.depth()));
            Entries::Large {
                map: OrdMap::from(entries),
                depths,
            }
        };
        Object {
            entries,
            bytes,
            depth,
        }
    }

    /// From entries in any order; a repeated key keeps its last value, as
    /// serde_json's map does.
    fn from_unsorted(mut entries: Vec<(Arc<str>, Node)>) -> Object {
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        Object::from_sorted(entries)
    }

    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Small(v) => v.len(),
            Entries::Large { map, .. } => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.entries {
            Entries::Small(v) => search(v, key).ok().map(|i| &v[i].1),
            Entries::Large { map, .. } => map.get(key),
        }
    }

    /// Entries in key order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&Arc<str>, &Node)> + '_> {
        match &self.entries {
            Entries::Small(v) => Box::new(v.iter().map(|(k, v)| (k, v))),
            Entries::Large { map, .. } => Box::new(map.iter()),
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.entries {
            Entries::Small(v) => search(v, key).ok().map(|i| &mut v[i].1),
            Entries::Large { map, .. } => map.get_mut(key),
        }
    }

    fn redepth(&mut self, gone: Option<usize>, came: Option<usize>) {
        self.depth = match &mut self.entries {
            Entries::Small(v) => 1 + v.iter().map(|(_, n)| n.depth()).max().unwrap_or(0),
            Entries::Large { depths, .. } => {
                came.into_iter().for_each(|d| depths.add(d));
                gone.into_iter().for_each(|d| depths.remove(d));
                depths.container_depth()
            }
        };
    }

    /// Sets `key` to `node`, returning the value it replaced.
    fn insert(&mut self, key: &str, node: Node) -> Option<Node> {
        let (len, depth) = (node.encoded_len(), node.depth());
        let old = match &mut self.entries {
            Entries::Small(v) => match search(v, key) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, node)),
                Err(i) if v.len() < SMALL_MAX => {
                    v.reserve_exact(1);
                    v.insert(i, (Arc::from(key), node));
                    None
                }
                Err(_) => {
                    let mut depths = Depths::default();
                    v.iter().for_each(|(_, n)| depths.add(n.depth()));
                    let mut map = OrdMap::from(std::mem::take(v));
                    map.insert(Arc::from(key), node);
                    self.entries = Entries::Large { map, depths };
                    None
                }
            },
            Entries::Large { map, .. } => map.insert(Arc::from(key), node),
        };
        match &old {
            Some(old) => self.bytes = self.bytes - old.encoded_len() + len,
            None => self.bytes += usize::from(self.len() > 1) + str_json_len(key) + 1 + len,
        }
        self.redepth(old.as_ref().map(Node::depth), Some(depth));
        old
    }

    fn remove(&mut self, key: &str) -> Option<Node> {
        let node = match &mut self.entries {
            Entries::Small(v) => search(v, key).ok().map(|i| v.remove(i).1),
            Entries::Large { map, .. } => map.remove(key),
        }?;
        self.bytes -= usize::from(!self.is_empty()) + str_json_len(key) + 1 + node.encoded_len();
        self.redepth(Some(node.depth()), None);
        Some(node)
    }
}

fn search(entries: &[(Arc<str>, Node)], key: &str) -> Result<usize, usize> {
    entries.binary_search_by(|(k, _)| (**k).cmp(key))
}

impl PartialEq for Array {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
            && self.len() == other.len()
            && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for Array {}

impl PartialEq for Object {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
            && self.len() == other.len()
            && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for Object {}

/// Descends `tokens` (serde_json pointer rules) and runs `f` on the node
/// there, then brings every container on the way back up to date: its
/// length and depth. Only the containers on the path are copied, and only
/// those still shared with another clone.
fn at_mut<R>(
    node: &mut Node,
    tokens: &[Cow<'_, str>],
    f: impl FnOnce(&mut Node) -> Result<R, PatchErrorKind>,
) -> Result<R, PatchErrorKind> {
    let Some((token, rest)) = tokens.split_first() else {
        return f(node);
    };
    // Refuse before copying anything on the way.
    if node.child(token).is_none() {
        return Err(PatchErrorKind::InvalidPointer);
    }
    match node {
        Node::Object(o) => {
            let o = Arc::make_mut(o);
            let child = o.get_mut(token).expect("checked above");
            let (old_len, old_depth) = (child.encoded_len(), child.depth());
            let r = at_mut(child, rest, f)?;
            let (new_len, new_depth) = (child.encoded_len(), child.depth());
            o.bytes = o.bytes - old_len + new_len;
            o.redepth(Some(old_depth), Some(new_depth));
            Ok(r)
        }
        Node::Array(a) => {
            let a = Arc::make_mut(a);
            let index = parse_index(token).expect("checked above");
            let child = a.get_mut(index).expect("checked above");
            let (old_len, old_depth) = (child.encoded_len(), child.depth());
            let r = at_mut(child, rest, f)?;
            let (new_len, new_depth) = (child.encoded_len(), child.depth());
            a.bytes = a.bytes - old_len + new_len;
            a.redepth(Some(old_depth), Some(new_depth));
            Ok(r)
        }
        _ => unreachable!("child() found a member of a scalar"),
    }
}

/// The decoded tokens of a pointer json-patch already validated.
fn tokens(pointer: &Pointer) -> Vec<Cow<'_, str>> {
    match pointer.as_str().strip_prefix('/') {
        None => Vec::new(),
        Some(rest) => rest.split('/').map(decode).collect(),
    }
}

fn add(root: &mut Node, path: &Pointer, node: Node) -> Result<(), PatchErrorKind> {
    let Some((parent, last)) = path.split_back() else {
        *root = node;
        return Ok(());
    };
    at_mut(root, &tokens(parent), |parent| match parent {
        Node::Object(o) => {
            Arc::make_mut(o).insert(&last.decoded(), node);
            Ok(())
        }
        Node::Array(a) => {
            let index = last.to_index()?.for_len_incl(a.len())?;
            Arc::make_mut(a).insert(index, node);
            Ok(())
        }
        _ => Err(PatchErrorKind::InvalidPointer),
    })
}

fn remove(root: &mut Node, path: &Pointer) -> Result<Node, PatchErrorKind> {
    let (parent, last) = path.split_back().ok_or(PatchErrorKind::InvalidPointer)?;
    at_mut(root, &tokens(parent), |parent| match parent {
        Node::Object(o) => {
            let key = last.decoded();
            if o.get(&key).is_none() {
                return Err(PatchErrorKind::InvalidPointer);
            }
            Ok(Arc::make_mut(o).remove(&key).expect("checked above"))
        }
        Node::Array(a) => {
            let index = last.to_index()?.for_len(a.len())?;
            Ok(Arc::make_mut(a).remove(index))
        }
        _ => Err(PatchErrorKind::InvalidPointer),
    })
}

fn replace(root: &mut Node, path: &Pointer, node: Node) -> Result<(), PatchErrorKind> {
    let mut path = tokens(path);
    let Some(last) = path.pop() else {
        *root = node;
        return Ok(());
    };
    at_mut(root, &path, |parent| {
        if parent.child(&last).is_none() {
            return Err(PatchErrorKind::InvalidPointer);
        }
        match parent {
            Node::Object(o) => drop(Arc::make_mut(o).insert(&last, node)),
            Node::Array(a) => {
                let index = parse_index(&last).expect("checked above");
                drop(Arc::make_mut(a).set(index, node));
            }
            _ => unreachable!("child() found a member of a scalar"),
        }
        Ok(())
    })
}

/// Applies one op in place, with json-patch 4's semantics and errors. On
/// `Err` the document may be partly changed (a `move` whose `add` failed):
/// the caller keeps the old root to restore, which is O(1).
pub fn apply(root: &mut Node, op: &PatchOperation) -> Result<(), PatchErrorKind> {
    match op {
        PatchOperation::Add(a) => add(root, &a.path, Node::from_value(&a.value)),
        PatchOperation::Remove(r) => remove(root, &r.path).map(drop),
        PatchOperation::Replace(r) => replace(root, &r.path, Node::from_value(&r.value)),
        PatchOperation::Move(m) => {
            if m.path.starts_with(&m.from) && m.path.len() != m.from.len() {
                return Err(PatchErrorKind::CannotMoveInsideItself);
            }
            let node = remove(root, &m.from).map_err(|e| match e {
                PatchErrorKind::InvalidPointer => PatchErrorKind::InvalidFromPointer,
                e => e,
            })?;
            add(root, &m.path, node)
        }
        PatchOperation::Copy(c) => {
            let node = root
                .pointer(c.from.as_str())
                .ok_or(PatchErrorKind::InvalidFromPointer)?
                .clone();
            add(root, &c.path, node)
        }
        PatchOperation::Test(t) => {
            let target = root
                .pointer(t.path.as_str())
                .ok_or(PatchErrorKind::InvalidPointer)?;
            match target.eq_value(&t.value) {
                true => Ok(()),
                false => Err(PatchErrorKind::TestFailed),
            }
        }
    }
}

impl Serialize for Node {
    /// The same text serde_json writes for the equal `Value`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(v) => s.serialize_str(v),
            Node::Array(a) => s.collect_seq(a.iter()),
            Node::Object(o) => s.collect_map(o.iter().map(|(k, v)| (&**k, v))),
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(text) => f.write_str(&text),
            Err(_) => f.write_str("<unprintable>"),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    /// Builds the tree straight from the text, with no `Value` in between,
    /// as serde_json's `Value` would read it (a repeated key keeps its last
    /// value). The deserializer bounds recursion (serde_json: 128 levels).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Number::from_f64(v).map_or(Node::Null, Node::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(Arc::from(v)))
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Deserialize::deserialize(d)
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(Arc::new(Array::from_vec(items))))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: Node = map.next_value()?;
            entries.push((Arc::from(key.as_str()), value));
        }
        Ok(Node::Object(Arc::new(Object::from_unsorted(entries))))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use json_patch::Patch;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn string_lengths_match_serde_json_for_every_ascii_byte() {
        // Both paths of str_json_len: each ASCII character alone, beside
        // plain text, and every escape class together with non-ASCII text.
        for b in 0u8..0x80 {
            let c = char::from(b);
            for s in [c.to_string(), format!("ab{c}cd"), format!("{c}é{c}\u{1}\"")] {
                let want = serde_json::to_string(&s).unwrap().len();
                assert_eq!(str_json_len(&s), want, "{s:?}");
            }
        }
        assert_eq!(str_json_len(""), 2);
        assert_eq!(str_json_len("plain ünïcode"), "plain ünïcode".len() + 2);
    }

    #[test]
    fn pointer_tokens_unescape_only_when_they_must() {
        assert!(matches!(decode("plain"), Cow::Borrowed("plain")));
        assert_eq!(decode("a~1b"), "a/b");
        assert_eq!(decode("~01"), "~1");
        assert_eq!(decode("~0~1"), "~/");
        let doc = Node::from_value(&json!({"a/b": {"~1": 1}, "c": 2}));
        assert_eq!(doc.pointer("/a~1b/~01"), Some(&Node::from_value(&json!(1))));
        assert_eq!(doc.pointer("/c"), Some(&Node::from_value(&json!(2))));
    }

    /// Applies `ops` all or nothing, as json_patch::patch does, and reports
    /// an error the same way: (op index, kind text, path).
    fn patch_tree(root: &mut Node, ops: &Patch) -> Result<(), (usize, String, String)> {
        let saved = root.clone();
        for (i, op) in ops.iter().enumerate() {
            if let Err(kind) = apply(root, op) {
                *root = saved;
                return Err((i, kind.to_string(), op.path().as_str().to_string()));
            }
        }
        Ok(())
    }

    /// Checks every cached length and depth against a fresh measurement
    /// from its members (linear), and the whole against serde_json's text.
    fn assert_caches_exact(node: &Node) {
        fn measure(node: &Node) -> (usize, usize) {
            let (len, depth) = match node {
                Node::Array(a) => {
                    let m: Vec<_> = a.iter().map(measure).collect();
                    let len = frame_len(m.len()) + m.iter().map(|x| x.0).sum::<usize>();
                    (len, 1 + m.iter().map(|x| x.1).max().unwrap_or(0))
                }
                Node::Object(o) => {
                    let m: Vec<_> = o.iter().map(|(k, v)| (k, measure(v))).collect();
                    let len = frame_len(m.len())
                        + m.iter()
                            .map(|(k, x)| json_len(&***k) + 1 + x.0)
                            .sum::<usize>();
                    (len, 1 + m.iter().map(|x| x.1 .1).max().unwrap_or(0))
                }
                _ => return (node.encoded_len(), 0),
            };
            assert_eq!((node.encoded_len(), node.depth()), (len, depth), "{node:?}");
            (len, depth)
        }
        measure(node);
        assert_eq!(
            node.encoded_len(),
            serde_json::to_string(node).unwrap().len()
        );
    }

    #[test]
    fn text_and_order_match_serde_json() {
        // Invariant: a tree serialises to exactly the bytes serde_json
        // writes for the same value (keys in byte order, escapes, numbers),
        // and reading that text back gives the same tree.
        let v = json!({"b": [1, -2, 2.5, 1e300, null, true], "a\"\n\u{1}é": {"z": "x\\y", "A": {}},
                       "": [], "big": (0..100).collect::<Vec<_>>(),
                       "keys": (0..50).map(|i| (format!("k{i}"), json!(i))).collect::<serde_json::Map<_, _>>()});
        let node = Node::from_value(&v);
        let text = serde_json::to_string(&node).unwrap();
        assert_eq!(text, serde_json::to_string(&v).unwrap());
        assert_eq!(
            serde_json::to_string_pretty(&node).unwrap(),
            serde_json::to_string_pretty(&v).unwrap()
        );
        let back: Node = serde_json::from_str(&text).unwrap();
        assert_eq!(back, node);
        assert_caches_exact(&node);
        let dup: Node = serde_json::from_str(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(dup.to_value(), json!({"a": 3, "b": 2}));
        assert_eq!(dup.encoded_len(), r#"{"a":3,"b":2}"#.len());
    }

    #[test]
    fn a_change_leaves_earlier_clones_alone() {
        // Invariant: a clone taken before a change still shows the document
        // as it was (the change copied, never wrote through, shared nodes).
        let mut doc = Node::from_value(&json!({"a": {"b": [1, 2]}, "c": 1}));
        let before = doc.clone();
        let ops: Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/c", "value": "x"},
        ]))
        .unwrap();
        patch_tree(&mut doc, &ops).unwrap();
        assert_eq!(before.to_value(), json!({"a": {"b": [1, 2]}, "c": 1}));
        assert_eq!(doc.to_value(), json!({"a": {"b": [1, 2, 3]}, "c": "x"}));
        assert_caches_exact(&before);
        assert_caches_exact(&doc);
    }

    #[test]
    fn a_change_copies_only_its_path() {
        // Invariant: every container a change did not touch is still the
        // very node the clone taken before it holds (shared, not copied),
        // in a big (imbl) object as in a small one.
        let big: serde_json::Map<String, Value> = (0..200)
            .map(|i| (format!("k{i}"), json!({"v": i})))
            .collect();
        let mut doc = Node::from_value(&json!({"big": big, "other": {"x": [1]}}));
        let before = doc.clone();
        let op: PatchOperation =
            serde_json::from_value(json!({"op": "add", "path": "/big/k7/v", "value": 0})).unwrap();
        apply(&mut doc, &op).unwrap();
        let shared = |p: &str| match (before.pointer(p), doc.pointer(p)) {
            (Some(Node::Object(a)), Some(Node::Object(b))) => Arc::ptr_eq(a, b),
            other => panic!("{p}: {other:?}"),
        };
        assert!(shared("/other") && shared("/big/k8") && shared("/big/k150"));
        assert!(!shared("/big/k7") && !shared("/big") && !shared(""));
        assert_caches_exact(&doc);
    }

    fn arb_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..40).prop_map(|n| json!(n)),
            Just(json!(0.5)),
            Just(json!(1.0)),
            "[ab/~\"é\n\u{1}\\\\]{0,3}".prop_map(Value::String),
        ]
    }

    /// Small keys so paths hit; wide containers now and then, so both the
    /// plain and the imbl representations are exercised.
    fn arb_value() -> impl Strategy<Value = Value> {
        arb_scalar().prop_recursive(3, 48, 6, |inner| {
            prop_oneof![
                4 => proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                1 => proptest::collection::vec(arb_scalar(), 30..36).prop_map(Value::Array),
                4 => proptest::collection::btree_map(arb_key(), inner.clone(), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                1 => proptest::collection::vec(inner, 28..36).prop_map(|v| Value::Object(
                    v.into_iter().enumerate().map(|(i, v)| (format!("k{i}"), v)).collect()
                )),
            ]
        })
    }

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("a/b".to_string()),
            Just("~".to_string()),
            Just("".to_string()),
            Just("0".to_string()),
            Just("k1".to_string()),
            Just("k33".to_string()),
        ]
    }

    /// Raw path text: existing-ish keys, indexes, `-`, bad indexes.
    fn arb_path() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("a"),
            Just("b"),
            Just("a~1b"),
            Just("~0"),
            Just(""),
            Just("0"),
            Just("1"),
            Just("2"),
            Just("31"),
            Just("35"),
            Just("-"),
            Just("01"),
            Just("k1"),
            Just("k33"),
        ];
        proptest::collection::vec(token, 0..4)
            .prop_map(|t| t.iter().map(|t| format!("/{t}")).collect::<String>())
    }

    /// One op as JSON: any kind, paths that often hit, small values.
    pub(crate) fn arb_op() -> impl Strategy<Value = Value> {
        let kind = prop_oneof![
            Just("add"),
            Just("remove"),
            Just("replace"),
            Just("test"),
            Just("copy"),
            Just("move")
        ];
        let value = prop_oneof![
            3 => arb_scalar(),
            1 => Just(json!({"a": [1, {"b": null}]})),
            1 => Just(json!([])),
        ];
        (kind, arb_path(), arb_path(), value).prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn ops_match_json_patch(
            doc in arb_value(),
            ops in proptest::collection::vec(arb_op(), 1..8),
        ) {
            // Invariant: applying a patch to the tree gives exactly what
            // json_patch gives on the equal Value, op by op: the same
            // document on success; on failure the same op index, error kind
            // and path, and the document as before. (The reference applies
            // one op at a time: json_patch's own undo of a multi-op patch is
            // not atomic, and can panic, when a `move` fails half way.)
            // Every cached length and depth stays exact, and a clone taken
            // before is untouched.
            let ops: Patch = serde_json::from_value(Value::Array(ops)).unwrap();
            let mut expected = doc.clone();
            let mut want = Ok(());
            for (i, op) in ops.iter().enumerate() {
                if let Err(e) = json_patch::patch(&mut expected, std::slice::from_ref(op)) {
                    want = Err((i, e.kind.to_string(), e.path.as_str().to_string()));
                    expected = doc.clone();
                    break;
                }
            }
            let mut tree = Node::from_value(&doc);
            let before = tree.clone();
            let got = patch_tree(&mut tree, &ops);
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(tree.to_value(), expected);
            prop_assert_eq!(before.to_value(), doc);
            assert_caches_exact(&tree);
            // A big container keeps its depth counts exact too: rebuild.
            prop_assert_eq!(&Node::from_value(&tree.to_value()), &tree);
        }
    }
}
