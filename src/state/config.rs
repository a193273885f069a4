//! The configuration document: one JSON value, changed only by RFC 6902
//! patches, each of which bumps the serial.
//!
//! The document is a [`Node`] tree (`state::doc`) whose parts are shared
//! between clones, so the state, the config actor's read copy and a snapshot
//! hold it for O(1) each, and a patch copies only the paths it changes: a
//! one-key change costs the same at 10 KB as at 100 MB.
//!
//! A patch applies wholly or not at all: it runs in place, and on failure
//! the old root, kept for O(1), is put back. Every op is bounded before it
//! runs, from the sizes the tree caches: without that, a short patch of
//! `copy` ops that each double the document would exhaust memory long
//! before any check on the result.

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::doc::{self, Node};
use super::StateError;
use crate::codec::{self, CodecError};

/// The most ops in one patch.
pub const PATCH_OPS_MAX: usize = 10_000;
/// The longest patch text. A record carries it whole, so it must also fit
/// the WAL's record limit; this is the state layer's own bound.
pub const PATCH_BYTES_MAX: usize = 4 << 20;
/// The deepest nesting of arrays and objects in the document. serde_json
/// refuses to parse deeper than 128, and a document this layer accepted must
/// always parse again from a snapshot.
pub const DOC_DEPTH_MAX: usize = 64;
/// The largest document, as compact JSON text: room for the 100 MB configs
/// the operating targets use. A snapshot carries the text whole, so the
/// codec's decode limit must be above this too.
pub const DOC_BYTES_MAX: usize = 256 << 20;
/// The lock a session must hold exclusively to write the document.
pub const CONFIG_LOCK: &str = "config";

/// `Clone` is O(1): the document's nodes are shared, not copied.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigState {
    doc: Node,
    serial: u64,
    /// The LSN of the record that last changed the document (0: never
    /// changed). Kept here, and so in every snapshot, because `GET
    /// /v1/config` reports it and it cannot be derived from the document.
    lsn: u64,
    /// Length of `doc` as compact JSON, kept for status pages and limits;
    /// the tree keeps it exact as it changes.
    doc_bytes: usize,
}

impl Default for ConfigState {
    fn default() -> Self {
        ConfigState {
            doc: Node::default(),
            serial: 0,
            lsn: 0,
            doc_bytes: 2,
        }
    }
}

/// Counts bytes and fails once past a cap, so measuring a value that is too
/// large stops early instead of walking all of it.
struct CappedCounter {
    len: usize,
    cap: usize,
}

impl std::io::Write for CappedCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len += buf.len();
        if self.len > self.cap {
            return Err(std::io::Error::other("over cap"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The compact JSON length of a patch's value, or None if it exceeds `cap`.
/// Only call on values whose depth is already known to be bounded
/// (serialization recurses).
fn encoded_len_capped(v: &Value, cap: usize) -> Option<usize> {
    let mut counter = CappedCounter { len: 0, cap };
    serde_json::to_writer(&mut counter, v).ok()?;
    Some(counter.len)
}

/// The nesting depth of `v` (a scalar is 0, `{}` is 1), or None if it
/// exceeds `cap`. Iterative, so hostile depth cannot overflow the stack.
fn depth_capped(v: &Value, cap: usize) -> Option<usize> {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, above)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        let depth = above + 1;
        if depth > cap {
            return None;
        }
        deepest = deepest.max(depth);
        stack.extend(children.map(|c| (c, depth)));
    }
    Some(deepest)
}

/// A patch's text with its ops, parsed once: `ops` is always
/// `parse_patch(json)`, which only [`ParsedPatch::parse`] makes. The HTTP
/// worker parses every patch to refuse a malformed one before any lock
/// check, and hands both on, so the sequencer does not parse it again.
#[derive(Debug)]
pub struct ParsedPatch {
    json: String,
    ops: Patch,
}

impl ParsedPatch {
    pub fn parse(json: String) -> Result<ParsedPatch, StateError> {
        let ops = parse_patch(&json)?;
        Ok(ParsedPatch { json, ops })
    }

    /// The text (for the record) and the ops (for applying it).
    pub fn into_parts(self) -> (String, Patch) {
        (self.json, self.ops)
    }
}

/// Parses patch text, bounded before and after parsing.
pub fn parse_patch(patch_json: &str) -> Result<Patch, StateError> {
    if patch_json.len() > PATCH_BYTES_MAX {
        return Err(StateError::RequestTooLarge {
            what: "patch bytes",
            len: patch_json.len(),
            max: PATCH_BYTES_MAX,
        });
    }
    let patch: Patch = serde_json::from_str(patch_json).map_err(|e| StateError::PatchParse {
        message: e.to_string(),
    })?;
    if patch.len() > PATCH_OPS_MAX {
        return Err(StateError::RequestTooLarge {
            what: "patch ops",
            len: patch.len(),
            max: PATCH_OPS_MAX,
        });
    }
    Ok(patch)
}

impl ConfigState {
    pub fn doc(&self) -> &Node {
        &self.doc
    }

    /// Bumped by every applied patch; 0 for the initial `{}`.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The LSN of the last record that changed the document; 0 if none has.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    pub fn doc_bytes(&self) -> usize {
        self.doc_bytes
    }

    /// The value at an RFC 6901 pointer (`""` is the whole document).
    pub fn get(&self, pointer: &str) -> Option<&Node> {
        self.doc.pointer(pointer)
    }

    /// Whether `patch` would apply, without changing anything.
    pub fn check_patch(&self, patch: &Patch) -> Result<(), StateError> {
        self.clone().patch(patch)
    }

    /// Applies `patch`, carried by the record at `lsn`, wholly, bumping the
    /// serial, or changes nothing and says which op failed.
    pub fn apply_patch(&mut self, lsn: u64, patch: &Patch) -> Result<(), StateError> {
        self.patch(patch)?;
        self.serial += 1;
        self.lsn = lsn;
        Ok(())
    }

    /// Runs `patch` on the document in place, or puts the old root back.
    fn patch(&mut self, patch: &Patch) -> Result<(), StateError> {
        let saved = self.doc.clone();
        match patch_in_place(&mut self.doc, patch) {
            Ok(doc_bytes) => {
                self.doc_bytes = doc_bytes;
                Ok(())
            }
            Err(e) => {
                self.doc = saved;
                Err(e)
            }
        }
    }
}

/// Applies `patch` to `doc` op by op and returns the new length; on `Err`
/// `doc` is partly changed and the caller restores it. Each op is bounded
/// before it runs: the depth it can create, and for `add`, `replace` and
/// `copy` the bytes it adds. Additions are summed without crediting
/// removals, so one patch can add at most DOC_BYTES_MAX; the result, whose
/// length the tree keeps exact, is then checked too.
fn patch_in_place(doc: &mut Node, patch: &Patch) -> Result<usize, StateError> {
    if patch.len() > PATCH_OPS_MAX {
        let (what, len, max) = ("patch ops", patch.len(), PATCH_OPS_MAX);
        return Err(StateError::RequestTooLarge { what, len, max });
    }
    let mut added_bytes = 0usize;
    for (op_index, op) in patch.iter().enumerate() {
        let too_large = |what| StateError::PatchTooLarge { op_index, what };
        let room = DOC_DEPTH_MAX.checked_sub(op.path().count());
        let cap = DOC_BYTES_MAX - added_bytes;
        // Whether what the op inserts fits the depth left below its path,
        // and the bytes it adds (None: over the cap).
        let (depth_fits, bytes) = match op {
            PatchOperation::Add(AddOperation { value, .. })
            | PatchOperation::Replace(ReplaceOperation { value, .. }) => (
                room.and_then(|room| depth_capped(value, room)).is_some(),
                Some(encoded_len_capped(value, cap)),
            ),
            PatchOperation::Copy(c) => {
                let from = resolve_from(doc, op_index, c.from.as_str())?;
                let len = from.encoded_len();
                let fits = room.is_some_and(|room| from.depth() <= room);
                (fits, Some((len <= cap).then_some(len)))
            }
            PatchOperation::Move(m) => {
                let from = resolve_from(doc, op_index, m.from.as_str())?;
                (room.is_some_and(|room| from.depth() <= room), None)
            }
            PatchOperation::Remove(_) | PatchOperation::Test(_) => (true, None),
        };
        if !depth_fits {
            return Err(too_large("document depth"));
        }
        if let Some(bytes) = bytes {
            added_bytes += bytes.ok_or(too_large("document bytes"))?;
        }
        doc::apply(doc, op).map_err(|kind| StateError::Patch {
            op_index,
            message: format!("{kind} (path {:?})", op.path().as_str()),
        })?;
    }
    match doc.encoded_len() {
        len if len <= DOC_BYTES_MAX => Ok(len),
        _ => Err(StateError::PatchTooLarge {
            op_index: patch.len(),
            what: "document bytes",
        }),
    }
}

/// The value a `copy` or `move` reads. A missing source is reported here,
/// naming the `from` path, because its size must be known first.
fn resolve_from<'a>(doc: &'a Node, op_index: usize, from: &str) -> Result<&'a Node, StateError> {
    doc.pointer(from).ok_or_else(|| StateError::Patch {
        op_index,
        message: format!("\"from\" path is invalid (path {from:?})"),
    })
}

/// The persisted form: the document as compact JSON text (bincode cannot
/// carry a self-describing value; keys are in byte order, so the text is
/// canonical, and the same text a `serde_json::Value` would give).
#[derive(Serialize, Deserialize)]
struct ConfigRepr<'a> {
    /// Borrowed from the input where the deserializer allows (a snapshot is
    /// decoded from its mapping), so a restart does not copy a 100 MB text.
    #[serde(borrow)]
    doc_json: std::borrow::Cow<'a, str>,
    serial: u64,
    lsn: u64,
}

impl Serialize for ConfigState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Sized exactly from the tree's cached length: grown by doubling, a
        // 100 MB document's text took up to 192 MB at once.
        let mut text = Vec::with_capacity(self.doc.encoded_len());
        serde_json::to_writer(&mut text, &self.doc).map_err(serde::ser::Error::custom)?;
        let doc_json = String::from_utf8(text).map_err(serde::ser::Error::custom)?;
        ConfigRepr {
            doc_json: doc_json.into(),
            serial: self.serial,
            lsn: self.lsn,
        }
        .serialize(serializer)
    }
}

impl ConfigState {
    /// Writes the codec's encoding of this state (the same bytes as
    /// `codec::encode_to_write(self, ..)`), streaming the document's text
    /// from the tree instead of building it: a snapshot of a 100 MB config
    /// no longer holds a second, textual copy of it. Returns the bytes
    /// written.
    pub fn encode_to_write<W: std::io::Write>(&self, out: &mut W) -> Result<usize, CodecError> {
        let text = codec::encode_str_to_write(
            self.doc.encoded_len(),
            |w| serde_json::to_writer(w, &self.doc).map_err(std::io::Error::other),
            out,
        )?;
        // The fields after `doc_json`, in `ConfigRepr`'s order.
        Ok(text + codec::encode_to_write(&(self.serial, self.lsn), out)?)
    }
}

impl<'de> Deserialize<'de> for ConfigState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let repr = ConfigRepr::deserialize(deserializer)?;
        if repr.doc_json.len() > DOC_BYTES_MAX {
            return Err(D::Error::custom(
                "config document longer than DOC_BYTES_MAX",
            ));
        }
        if (repr.serial == 0) != (repr.lsn == 0) {
            return Err(D::Error::custom(
                "config serial and the LSN of its last change disagree",
            ));
        }
        // Straight into the tree: serde_json bounds the recursion (128),
        // and the tree knows its depth and length once built.
        let doc: Node = serde_json::from_str(&repr.doc_json).map_err(D::Error::custom)?;
        if doc.depth() > DOC_DEPTH_MAX {
            return Err(D::Error::custom(
                "config document deeper than DOC_DEPTH_MAX",
            ));
        }
        let doc_bytes = doc.encoded_len();
        if doc_bytes > DOC_BYTES_MAX {
            return Err(D::Error::custom(
                "config document longer than DOC_BYTES_MAX",
            ));
        }
        Ok(ConfigState {
            doc,
            serial: repr.serial,
            lsn: repr.lsn,
            doc_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::doc::tests::arb_op;
    use proptest::prelude::*;
    use serde_json::json;

    fn patch(v: Value) -> Patch {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_snapshot_decode_borrows_the_document_text() {
        // Invariant: decoding a snapshot reads the document's text in place
        // (no copy of a 100 MB string at restart), and gives the same state.
        let mut c = ConfigState::default();
        c.apply_patch(
            1,
            &patch(json!([{"op": "add", "path": "/a", "value": "x"}])),
        )
        .unwrap();
        let bytes = codec::encode(&c).unwrap();
        let repr: ConfigRepr = codec::decode_snapshot(&bytes).unwrap();
        assert!(matches!(repr.doc_json, std::borrow::Cow::Borrowed(_)));
        let back: ConfigState = codec::decode_snapshot(&bytes).unwrap();
        assert_eq!(back.serial(), c.serial());
        assert_eq!(codec::encode(&back).unwrap(), bytes);
    }

    #[test]
    fn patch_applies_and_bumps_serial() {
        // Invariant: a successful patch changes the doc and adds 1 to serial.
        let mut c = ConfigState::default();
        c.apply_patch(
            1,
            &patch(json!([{"op": "add", "path": "/nodes", "value": {"n1": 1}}])),
        )
        .unwrap();
        assert_eq!(c.serial(), 1);
        assert_eq!(c.get("/nodes/n1").map(Node::to_value), Some(json!(1)));
        assert_eq!(
            c.get("").map(Node::to_value),
            Some(json!({"nodes": {"n1": 1}}))
        );
        assert_eq!(c.get("nodes"), None);
        assert_eq!(c.doc_bytes(), serde_json::to_string(c.doc()).unwrap().len());
    }

    #[test]
    fn failing_op_is_named_and_nothing_changes() {
        // Invariant: a patch failing at op i reports i and leaves doc and
        // serial exactly as they were.
        let mut c = ConfigState::default();
        c.apply_patch(1, &patch(json!([{"op": "add", "path": "/a", "value": 1}])))
            .unwrap();
        let before = c.clone();
        let p = patch(json!([
            {"op": "add", "path": "/b", "value": 2},
            {"op": "test", "path": "/a", "value": 2},
        ]));
        let e = c.apply_patch(1, &p).unwrap_err();
        assert!(matches!(e, StateError::Patch { op_index: 1, .. }), "{e:?}");
        assert_eq!(c, before);
        let p = patch(json!([{"op": "copy", "from": "/nope", "path": "/c"}]));
        assert!(matches!(
            c.apply_patch(1, &p),
            Err(StateError::Patch { op_index: 0, .. })
        ));
        assert_eq!(c, before);
    }

    #[test]
    fn doubling_copies_are_stopped_before_memory_runs_out() {
        // Invariant: no patch can make the document exceed DOC_BYTES_MAX or
        // DOC_DEPTH_MAX, even by copying it into itself repeatedly.
        let mut c = ConfigState::default();
        let blob = "x".repeat(1 << 20);
        c.apply_patch(
            1,
            &patch(json!([{"op": "add", "path": "/a", "value": blob}])),
        )
        .unwrap();
        let before = c.clone();
        let ops: Vec<Value> = (0..64)
            .map(|_| json!({"op": "copy", "from": "", "path": "/a"}))
            .collect();
        let e = c.apply_patch(1, &patch(Value::Array(ops))).unwrap_err();
        assert!(matches!(e, StateError::PatchTooLarge { .. }), "{e:?}");
        assert_eq!(c, before);
        let mut deep = json!(1);
        for _ in 0..DOC_DEPTH_MAX {
            deep = json!([deep]);
        }
        let e = c.apply_patch(
            1,
            &patch(json!([{"op": "add", "path": "/d", "value": deep}])),
        );
        assert!(matches!(
            e,
            Err(StateError::PatchTooLarge {
                op_index: 0,
                what: "document depth"
            })
        ));
    }

    #[test]
    fn documents_past_the_old_16_mib_limit_are_kept_exactly() {
        // Invariant (issue 5's 100 MB configs): a document over 16 MiB,
        // built through patches within PATCH_BYTES_MAX, is accepted and its
        // length stays exact.
        let mut c = ConfigState::default();
        let blob = "x".repeat(PATCH_BYTES_MAX - 64);
        let add = json!([{"op": "add", "path": "/b0", "value": blob}]);
        c.apply_patch(1, &patch(add)).unwrap();
        let copies: Vec<Value> = (1..5)
            .map(|i| json!({"op": "copy", "from": "/b0", "path": format!("/b{i}")}))
            .collect();
        c.apply_patch(2, &patch(Value::Array(copies))).unwrap();
        // {"b0":"xx..","b1":"xx..",...}: 5 members of 5 + len + 2 bytes.
        let expected = 2 + 5 * (5 + blob.len() + 2) + 4;
        assert!(expected > 16 << 20);
        assert_eq!(c.doc_bytes(), expected);
    }

    #[test]
    fn parse_patch_bounds_input() {
        // Invariant: malformed or oversized patch text is an error.
        assert!(matches!(
            parse_patch("{"),
            Err(StateError::PatchParse { .. })
        ));
        assert!(matches!(
            parse_patch(r#"[{"op":"nope"}]"#),
            Err(StateError::PatchParse { .. })
        ));
        let ops = vec![r#"{"op":"test","path":"","value":{}}"#; PATCH_OPS_MAX + 1];
        let text = format!("[{}]", ops.join(","));
        assert!(matches!(
            parse_patch(&text),
            Err(StateError::RequestTooLarge { .. })
        ));
        assert!(parse_patch("[]").unwrap().is_empty());
    }

    #[test]
    fn snapshot_round_trip_and_refusal() {
        // Invariant: decode(encode(c)) == c; a too-deep doc is refused.
        let mut c = ConfigState::default();
        c.apply_patch(
            1,
            &patch(json!([{"op": "add", "path": "/z", "value": [1, {"b": null}]}])),
        )
        .unwrap();
        let back: ConfigState = crate::codec::decode(&crate::codec::encode(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let deep = format!(
            "{}1{}",
            "[".repeat(DOC_DEPTH_MAX + 1),
            "]".repeat(DOC_DEPTH_MAX + 1)
        );
        let bytes = crate::codec::encode(&ConfigRepr {
            doc_json: deep.into(),
            serial: 1,
            lsn: 1,
        })
        .unwrap();
        assert!(crate::codec::decode::<ConfigState>(&bytes).is_err());
    }

    #[test]
    fn lsn_of_last_change_is_kept_and_survives_a_snapshot() {
        // Invariant: `lsn` is the LSN of the last applied patch (a failed
        // patch does not move it), it round-trips, and a snapshot whose
        // serial and lsn disagree about "never changed" is refused.
        let mut c = ConfigState::default();
        assert_eq!((c.serial(), c.lsn()), (0, 0));
        c.apply_patch(7, &patch(json!([{"op": "add", "path": "/a", "value": 1}])))
            .unwrap();
        let bad = patch(json!([{"op": "remove", "path": "/nope"}]));
        assert!(c.apply_patch(9, &bad).is_err());
        assert_eq!((c.serial(), c.lsn()), (1, 7));
        let back: ConfigState = crate::codec::decode(&crate::codec::encode(&c).unwrap()).unwrap();
        assert_eq!(back.lsn(), 7);
        for (serial, lsn) in [(1, 0), (0, 5)] {
            let repr = ConfigRepr {
                doc_json: "{}".into(),
                serial,
                lsn,
            };
            let bytes = crate::codec::encode(&repr).unwrap();
            assert!(crate::codec::decode::<ConfigState>(&bytes).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn patches_are_atomic(
            setup in proptest::collection::vec(arb_op(), 0..6),
            ops in proptest::collection::vec(arb_op(), 1..6),
        ) {
            // Invariant: a patch either applies all its ops in sequence (the
            // same as applying them one by one) and bumps serial once, or
            // reports the first failing op index and changes nothing.
            let mut c = ConfigState::default();
            for op in setup {
                let _ = c.apply_patch(1, &patch(json!([op])));
            }
            let before = c.clone();
            let mut expected = c.doc().to_value();
            let mut first_failure = None;
            for (i, op) in ops.iter().enumerate() {
                if json_patch::patch(&mut expected, &patch(json!([op]))).is_err() {
                    first_failure = Some(i);
                    break;
                }
            }
            match c.apply_patch(1, &patch(Value::Array(ops))) {
                Ok(()) => {
                    prop_assert_eq!(first_failure, None);
                    prop_assert_eq!(c.doc().to_value(), expected);
                    let text = serde_json::to_string(c.doc()).unwrap();
                    prop_assert_eq!(c.doc_bytes(), text.len());
                    prop_assert_eq!(c.serial(), before.serial() + 1);
                }
                Err(StateError::Patch { op_index, .. }) => {
                    prop_assert_eq!(Some(op_index), first_failure);
                    prop_assert_eq!(&c, &before);
                }
                Err(e) => prop_assert!(false, "unexpected {:?}", e),
            }
        }
    }
}
