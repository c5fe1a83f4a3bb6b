//! A YAML document as a tree that remembers where every node stands.
//!
//! serde_yaml reports the first error only and forgets positions once a
//! value is parsed; validation needs every finding with its line and
//! column. So the loader parses with yaml-rust2's event parser into this
//! small tree and reads typed fields out of it itself.
//!
//! Scalars are kept as written, with their style: a plain `1001` and a
//! quoted `"1001"` are different things (a number and a string), exactly
//! as the JSON Schema and an editor see them.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Line and column, both counting from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos { line: clamp(m.line()), column: clamp(m.col() + 1) }
    }
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Scalar(Scalar),
    Seq(Vec<Node>, Pos),
    Map(Vec<(Node, Node)>, Pos),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// True for `'…'`, `"…"`, `|` and `>` scalars: always strings.
    pub quoted: bool,
    pub pos: Pos,
}

/// What a scalar means under YAML 1.2's core schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    Null,
    Bool(bool),
    Int,
    Float,
    Str,
}

impl Scalar {
    pub fn kind(&self) -> ScalarKind {
        if self.quoted {
            return ScalarKind::Str;
        }
        let t = self.text.as_str();
        match t {
            "" | "~" | "null" | "Null" | "NULL" => ScalarKind::Null,
            "true" | "True" | "TRUE" => ScalarKind::Bool(true),
            "false" | "False" | "FALSE" => ScalarKind::Bool(false),
            _ if is_int(t) => ScalarKind::Int,
            _ if is_float(t) => ScalarKind::Float,
            _ => ScalarKind::Str,
        }
    }
}

fn is_int(t: &str) -> bool {
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if let Some(hex) = digits.strip_prefix("0x") {
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    if let Some(oct) = digits.strip_prefix("0o") {
        return !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b));
    }
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_float(t: &str) -> bool {
    matches!(t, ".inf" | ".Inf" | ".INF" | "-.inf" | "+.inf" | ".nan" | ".NaN" | ".NAN")
        || (t.bytes().any(|b| b.is_ascii_digit())
            && t.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
            && t.parse::<f64>().is_ok())
}

impl Node {
    pub fn pos(&self) -> Pos {
        match self {
            Node::Scalar(s) => s.pos,
            Node::Seq(_, p) | Node::Map(_, p) => *p,
        }
    }

    /// A short description of the node's type, for "expected X, found Y".
    pub fn describe(&self) -> String {
        match self {
            Node::Seq(..) => "a list".into(),
            Node::Map(..) => "a mapping".into(),
            Node::Scalar(s) => match s.kind() {
                ScalarKind::Null => "nothing (null)".into(),
                ScalarKind::Bool(b) => format!("the boolean {b}"),
                ScalarKind::Int | ScalarKind::Float => format!("the number {}", s.text),
                ScalarKind::Str => {
                    let shown: String = s.text.chars().take(40).collect();
                    let more = if shown.len() < s.text.len() { "…" } else { "" };
                    format!("the string {shown:?}{more}")
                }
            },
        }
    }

    /// Like [`Node::describe`], without the value: for fields that hold secrets.
    pub fn describe_kind(&self) -> &'static str {
        match self {
            Node::Seq(..) => "a list",
            Node::Map(..) => "a mapping",
            Node::Scalar(s) => match s.kind() {
                ScalarKind::Null => "nothing (null)",
                ScalarKind::Bool(_) => "a boolean",
                ScalarKind::Int | ScalarKind::Float => "a number",
                ScalarKind::Str => "a string",
            },
        }
    }
}

/// A document that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Nodes one document may expand to, aliases included: a guard against
/// "billion laughs" documents.
const MAX_NODES: usize = 5_000_000;

/// Nodes aliases may add beyond those written out: at most this many, or as
/// many as the document wrote itself so far if that is more. A real spec
/// file reuses a small mapping a few times; a 200-byte alias bomb reached
/// 4.8 million nodes (390 MB, seconds of work) under [`MAX_NODES`] alone.
const MAX_ALIAS_NODES: usize = 100_000;

/// Parses the first document of `text`. `Ok(None)` for a stream with no
/// document at all (an empty file, or comments only).
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, true)
        .map_err(|e| SyntaxError { pos: Pos::from_marker(*e.marker()), message: e.info().to_string() })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    if builder.documents > 1 {
        return Err(SyntaxError {
            pos: builder.second_document.unwrap_or_default(),
            message: "a spec file holds one YAML document; found a second one (`---`)".into(),
        });
    }
    Ok(builder.root)
}

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Pos, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    /// Of `nodes`, those copied by aliases.
    alias_nodes: usize,
    documents: usize,
    second_document: Option<Pos>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            let n = size(&node);
            self.anchors.insert(anchor, (node.clone(), n));
        }
        match self.stack.last_mut() {
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, key, ..)) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
            None => {
                if self.documents == 1 {
                    self.root = Some(node);
                }
            }
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES && self.error.is_none() {
            self.error = Some(SyntaxError {
                pos,
                message: format!("document expands to more than {MAX_NODES} nodes (aliases?)"),
            });
        }
        self.error.is_none()
    }
}

fn size(node: &Node) -> usize {
    match node {
        Node::Scalar(_) => 1,
        Node::Seq(items, _) => 1 + items.iter().map(size).sum::<usize>(),
        Node::Map(entries, _) => 1 + entries.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document = Some(pos);
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                if !self.count(1, pos) {
                    return;
                }
                // An explicit `!!str` tag makes a plain scalar a string.
                let tagged_str = tag.is_some_and(|t| t.suffix == "str");
                let quoted = tagged_str || !matches!(style, TScalarStyle::Plain);
                self.push(Node::Scalar(Scalar { text, quoted, pos }), anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), pos, anchor)),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(Vec::new(), None, pos, anchor)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(items, p, a)) => (Node::Seq(items, p), a),
                    Some(Frame::Map(entries, _, p, a)) => (Node::Map(entries, p), a),
                    None => return,
                };
                if self.count(1, pos) {
                    self.push(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).map(|(_, n)| *n) {
                Some(n) => {
                    self.alias_nodes = self.alias_nodes.saturating_add(n);
                    let written = self.nodes - (self.alias_nodes - n);
                    if self.alias_nodes > MAX_ALIAS_NODES.max(written) {
                        self.error = Some(SyntaxError {
                            pos,
                            message: format!(
                                "aliases expand the document by more than {} nodes (an alias bomb?)",
                                MAX_ALIAS_NODES.max(written)
                            ),
                        });
                        return;
                    }
                    if self.count(n, pos) {
                        if let Some((node, _)) = self.anchors.get(&id) {
                            let node = node.clone();
                            self.push(node, 0);
                        }
                    }
                }
                None => self.error = Some(SyntaxError { pos, message: "alias to an unknown anchor".into() }),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_from_one() {
        let root = parse("a: 1\nlist:\n  - x: \"y\"\n").expect("parses").expect("a document");
        let Node::Map(entries, _) = root else { panic!("map expected") };
        assert_eq!(entries[0].0.pos(), Pos { line: 1, column: 1 });
        assert_eq!(entries[0].1.pos(), Pos { line: 1, column: 4 });
        let Node::Seq(items, _) = &entries[1].1 else { panic!("seq expected") };
        let Node::Map(inner, _) = &items[0] else { panic!("map expected") };
        assert_eq!(inner[0].0.pos(), Pos { line: 3, column: 5 });
        assert_eq!(inner[0].1.pos(), Pos { line: 3, column: 8 });
    }

    #[test]
    fn an_alias_bomb_is_refused_early() {
        // 9^7 = 4.8 million nodes from 200 bytes: once parsed in full (390 MB).
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..7 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        text.push_str("extensions: *a6\n");
        let err = parse(&text).expect_err("refused");
        assert!(err.message.contains("alias bomb"), "{}", err.message);
        assert_eq!(err.pos.line, 6, "at the alias that went over");
        // Reusing a mapping is fine.
        let ok = "d: &d {context: c, transport: t}\nx: [*d, *d, *d, *d]\n";
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn scalar_kinds_follow_yaml_1_2_core() {
        let kind = |t: &str| Scalar { text: t.into(), quoted: false, pos: Pos::default() }.kind();
        assert_eq!(kind("1001"), ScalarKind::Int);
        assert_eq!(kind("0x1F"), ScalarKind::Int);
        assert_eq!(kind("1.5"), ScalarKind::Float);
        assert_eq!(kind("yes"), ScalarKind::Str);
        assert_eq!(kind("true"), ScalarKind::Bool(true));
        assert_eq!(kind("~"), ScalarKind::Null);
        assert_eq!(kind("ulaw"), ScalarKind::Str);
        assert_eq!(kind("1e"), ScalarKind::Str);
    }

    #[test]
    fn empty_and_comment_only_streams_have_no_document() {
        assert_eq!(parse("").expect("parses"), None);
        assert_eq!(parse("# only a comment\n").expect("parses"), None);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").expect_err("unclosed flow sequence");
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
                p = i - 1
            ));
        }
        let err = parse(&doc).expect_err("expansion is bounded");
        assert!(err.message.contains("more than"), "{err:?}");
    }

    #[test]
    fn a_second_document_is_an_error() {
        let err = parse("a: 1\n---\nb: 2\n").expect_err("two documents");
        assert_eq!(err.pos.line, 2);
    }
}
