//! Calico's label selector language, as used by `IPPool.spec.nodeSelector` and
//! `BGPPeer.spec.{nodeSelector,peerSelector}`.
//!
//! Supported: `all()`, `has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a', 'b'}`, `k not in {...}`,
//! `k contains 'v'`, `k starts with 'v'`, `k ends with 'v'`, `!`, `&&`, `||` and parentheses.
//! Values are quoted with `'` or `"`. An empty selector means `all()`, as in Calico.
//!
//! Semantics follow Calico: `k != 'v'` and `k not in {...}` also match when `k` is absent; every
//! other comparison needs the label to be present. `&&` binds tighter than `||`; `!` binds tightest.
//! Parsing never panics: nesting deeper than [`MAX_DEPTH`] is an error, not a stack overflow, and
//! so is a selector of more than [`MAX_TERMS`] terms. A chain of `&&` or `||` is a tree as deep as
//! the chain is long, and the derived `PartialEq` and `Drop`, `matches` and `Display` recurse
//! through it (in a debug build on a 2 MiB thread, `Display` overflowed at about 2,000 terms,
//! `PartialEq` at 5,000, `matches` at 10,000, found by fuzzing): the limit keeps every one of them
//! far from the stack's end, and no real selector comes near it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Deepest nesting of `(` and `!` the parser accepts.
pub const MAX_DEPTH: usize = 64;

/// Most terms (operands of `&&` and `||`) a selector may have.
pub const MAX_TERMS: usize = 256;

/// A parsed selector; [`Selector::matches`] evaluates it against a label map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Selector {
    /// `all()`: matches everything.
    #[default]
    All,
    /// `has(k)`.
    Has(String),
    /// `k == 'v'`.
    Eq(String, String),
    /// `k != 'v'` (also true when `k` is absent).
    Ne(String, String),
    /// `k in {...}`.
    In(String, Vec<String>),
    /// `k not in {...}` (also true when `k` is absent).
    NotIn(String, Vec<String>),
    /// `k contains 'v'`.
    Contains(String, String),
    /// `k starts with 'v'`.
    StartsWith(String, String),
    /// `k ends with 'v'`.
    EndsWith(String, String),
    /// `!e`.
    Not(Box<Selector>),
    /// `a && b`.
    And(Box<Selector>, Box<Selector>),
    /// `a || b`.
    Or(Box<Selector>, Box<Selector>),
}

/// Why a selector did not parse; `column` counts characters from 1.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: column {column}: {message}")]
pub struct SelectorError {
    /// The selector text as given.
    pub selector: String,
    /// 1-based character column where the problem was found.
    pub column: usize,
    /// What was expected or found.
    pub message: String,
}

impl Selector {
    /// Parses Calico selector text; empty or blank text is `all()`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let fail = |pos: usize, message: String| SelectorError {
            selector: text.to_string(),
            column: text[..pos.min(text.len())].chars().count() + 1,
            message,
        };
        let tokens = lex(text).map_err(|(pos, m)| fail(pos, m))?;
        if tokens.is_empty() {
            return Ok(Selector::All);
        }
        let mut p = Parser {
            tokens: &tokens,
            at: 0,
            end: text.len(),
            depth: 0,
            terms: 0,
        };
        let sel = p.or().map_err(|(pos, m)| fail(pos, m))?;
        if let Some(t) = p.peek() {
            return Err(fail(
                t.pos,
                format!(
                    "unexpected {} after a complete expression",
                    t.tok.describe()
                ),
            ));
        }
        Ok(sel)
    }

    /// Evaluates the selector against `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &String| labels.get(k).map(String::as_str);
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Selector::NotIn(k, vs) => !get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Selector::Contains(k, v) => get(k).is_some_and(|l| l.contains(v.as_str())),
            Selector::StartsWith(k, v) => get(k).is_some_and(|l| l.starts_with(v.as_str())),
            Selector::EndsWith(k, v) => get(k).is_some_and(|l| l.ends_with(v.as_str())),
            Selector::Not(e) => !e.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

fn quote(v: &str) -> String {
    if v.contains('\'') {
        format!("\"{v}\"")
    } else {
        format!("'{v}'")
    }
}

fn set(vs: &[String]) -> String {
    let items: Vec<String> = vs.iter().map(|v| quote(v)).collect();
    format!("{{{}}}", items.join(", "))
}

/// How tightly an expression binds when printed: `||`, then `&&`, then `!` and the terms.
fn precedence(e: &Selector) -> u8 {
    match e {
        Selector::Or(..) => 0,
        Selector::And(..) => 1,
        _ => 2,
    }
}

/// Writes `e`, in parentheses if it binds more loosely than its place (`min`) needs.
fn operand(f: &mut fmt::Formatter<'_>, e: &Selector, min: u8) -> fmt::Result {
    if precedence(e) < min {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

/// Prints canonical selector text that parses back to the same value. Only the parentheses that
/// precedence and left associativity need are printed, each matching one the parsed text had, so
/// the output nests no deeper than its source did (and stays within [`MAX_DEPTH`]).
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => write!(f, "all()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, vs) => write!(f, "{k} in {}", set(vs)),
            Selector::NotIn(k, vs) => write!(f, "{k} not in {}", set(vs)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(e) => {
                f.write_str("!")?;
                operand(f, e, 2)
            }
            Selector::And(a, b) => {
                operand(f, a, 1)?;
                f.write_str(" && ")?;
                operand(f, b, 2)
            }
            Selector::Or(a, b) => {
                operand(f, a, 0)?;
                f.write_str(" || ")?;
                operand(f, b, 1)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    And,
    Or,
    Not,
    EqEq,
    NotEq,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Str(s) => format!("string {}", quote(s)),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::Comma => "','".into(),
            Tok::And => "'&&'".into(),
            Tok::Or => "'||'".into(),
            Tok::Not => "'!'".into(),
            Tok::EqEq => "'=='".into(),
            Tok::NotEq => "'!='".into(),
        }
    }
}

struct Token {
    tok: Tok,
    pos: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

type PResult<T> = Result<T, (usize, String)>;

fn lex(text: &str) -> PResult<Vec<Token>> {
    let mut out = Vec::new();
    let mut it = text.char_indices().peekable();
    while let Some((pos, c)) = it.next() {
        let two = |it: &mut std::iter::Peekable<std::str::CharIndices>, want: char| {
            if it.peek().map(|&(_, n)| n) == Some(want) {
                it.next();
                true
            } else {
                false
            }
        };
        let tok = match c {
            c if c.is_whitespace() => continue,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            ',' => Tok::Comma,
            '&' if two(&mut it, '&') => Tok::And,
            '|' if two(&mut it, '|') => Tok::Or,
            '=' if two(&mut it, '=') => Tok::EqEq,
            '!' if two(&mut it, '=') => Tok::NotEq,
            '!' => Tok::Not,
            '\'' | '"' => {
                let mut s = String::new();
                loop {
                    match it.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, ch)) => s.push(ch),
                        None => {
                            return Err((pos, format!("unterminated string starting with {c}")))
                        }
                    }
                }
                Tok::Str(s)
            }
            c if is_word_char(c) => {
                let mut w = String::from(c);
                while let Some(&(_, n)) = it.peek() {
                    if !is_word_char(n) {
                        break;
                    }
                    w.push(n);
                    it.next();
                }
                Tok::Word(w)
            }
            '&' | '|' | '=' => return Err((pos, format!("'{c}' must be doubled ('{c}{c}')"))),
            other => return Err((pos, format!("unexpected character {other:?}"))),
        };
        out.push(Token { tok, pos });
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
    end: usize,
    depth: usize,
    terms: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn pos(&self) -> usize {
        self.peek().map_or(self.end, |t| t.pos)
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "end of input".to_string(), |t| t.tok.describe())
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().is_some_and(|t| &t.tok == tok) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> PResult<()> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err((
                self.pos(),
                format!("expected {what}, found {}", self.found()),
            ))
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        self.eat(&Tok::Word(w.to_string()))
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((self.pos(), format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> PResult<Selector> {
        let mut left = self.and()?;
        while self.eat(&Tok::Or) {
            let right = self.and()?;
            left = Selector::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> PResult<Selector> {
        let mut left = self.unary()?;
        while self.eat(&Tok::And) {
            let right = self.unary()?;
            left = Selector::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> PResult<Selector> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err((self.pos(), format!("more than {MAX_TERMS} terms")));
        }
        if self.eat(&Tok::Not) {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Selector::Not(Box::new(inner)));
        }
        if self.eat(&Tok::LParen) {
            self.enter()?;
            let inner = self.or()?;
            self.expect(&Tok::RParen, "')'")?;
            self.depth -= 1;
            return Ok(inner);
        }
        self.term()
    }

    fn string(&mut self, after: &str) -> PResult<String> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => Err((
                self.pos(),
                format!(
                    "expected a quoted value after {after}, found {}",
                    self.found()
                ),
            )),
        }
    }

    fn set(&mut self, after: &str) -> PResult<Vec<String>> {
        self.expect(&Tok::LBrace, &format!("'{{' after {after}"))?;
        let mut vs = Vec::new();
        if self.eat(&Tok::RBrace) {
            return Ok(vs);
        }
        loop {
            vs.push(self.string("'{' or ','")?);
            if self.eat(&Tok::RBrace) {
                return Ok(vs);
            }
            self.expect(&Tok::Comma, "',' or '}'")?;
        }
    }

    fn term(&mut self) -> PResult<Selector> {
        let key = match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => w.clone(),
            _ => {
                return Err((
                    self.pos(),
                    format!(
                        "expected a label name, all(), has(...), '!' or '(', found {}",
                        self.found()
                    ),
                ))
            }
        };
        self.at += 1;
        if (key == "all" || key == "global") && self.eat(&Tok::LParen) {
            self.expect(&Tok::RParen, &format!("')' after '{key}('"))?;
            return Ok(Selector::All);
        }
        if key == "has" && self.eat(&Tok::LParen) {
            let label = match self.peek().map(|t| &t.tok) {
                Some(Tok::Word(w)) => w.clone(),
                _ => {
                    return Err((
                        self.pos(),
                        format!("expected a label name in has(...), found {}", self.found()),
                    ))
                }
            };
            self.at += 1;
            self.expect(&Tok::RParen, "')' after has(label")?;
            return Ok(Selector::Has(label));
        }
        if self.eat(&Tok::EqEq) {
            return Ok(Selector::Eq(key, self.string("'=='")?));
        }
        if self.eat(&Tok::NotEq) {
            return Ok(Selector::Ne(key, self.string("'!='")?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set("'in'")?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err((
                    self.pos(),
                    format!("expected 'in' after 'not', found {}", self.found()),
                ));
            }
            return Ok(Selector::NotIn(key, self.set("'not in'")?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string("'contains'")?));
        }
        for (first, make) in [
            (
                "starts",
                Selector::StartsWith as fn(String, String) -> Selector,
            ),
            ("ends", Selector::EndsWith),
        ] {
            if self.eat_word(first) {
                if !self.eat_word("with") {
                    return Err((
                        self.pos(),
                        format!("expected 'with' after '{first}', found {}", self.found()),
                    ));
                }
                return Ok(make(key, self.string(&format!("'{first} with'"))?));
            }
        }
        Err((
            self.pos(),
            format!(
                "expected an operator (==, !=, in, not in, contains, starts with, ends with) \
                 after label {key:?}, found {}",
                self.found()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_chains_are_refused_before_they_can_overflow_the_stack() {
        let chain = |n: usize| vec!["a == ''"; n].join(" && ");
        assert!(Selector::parse(&chain(MAX_TERMS)).is_ok());
        let e = Selector::parse(&chain(MAX_TERMS + 1)).unwrap_err();
        assert!(e.message.contains("more than 256 terms"), "{e:?}");
        // 100,000 terms (a 900 KB selector): an error, not a crash.
        assert!(Selector::parse(&chain(100_000)).is_err());
    }

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn evaluates_calico_forms() {
        let l = labels(&[("rack", "r1"), ("zone", "eu-west-1a"), ("role", "rr")]);
        let cases = [
            ("", true),
            ("all()", true),
            ("global()", true),
            ("has(rack)", true),
            ("!has(rack)", false),
            ("has(missing)", false),
            ("rack == 'r1'", true),
            ("rack == \"r2\"", false),
            ("rack != 'r2'", true),
            ("missing != 'x'", true),
            ("rack in {'r1', 'r2'}", true),
            ("rack in {}", false),
            ("missing in {'r1'}", false),
            ("rack not in {'r1'}", false),
            ("missing not in {'r1'}", true),
            ("zone contains 'west'", true),
            ("zone starts with 'eu-'", true),
            ("zone ends with '1b'", false),
            ("rack == 'r1' && role == 'rr'", true),
            ("rack == 'r2' || role == 'rr'", true),
            ("rack == 'r2' || role == 'rr' && zone == 'x'", false),
            ("(rack == 'r2' || role == 'rr') && has(zone)", true),
            ("!(rack == 'r1')", false),
            ("!!has(rack)", true),
            ("example.com/tier-1_x == 'a'", false),
        ];
        for (text, want) in cases {
            assert_eq!(sel(text).matches(&l), want, "{text}");
        }
    }

    #[test]
    fn precedence_and_over_or() {
        assert_eq!(
            sel("has(a) || has(b) && has(c)"),
            Selector::Or(
                Box::new(Selector::Has("a".into())),
                Box::new(Selector::And(
                    Box::new(Selector::Has("b".into())),
                    Box::new(Selector::Has("c".into()))
                ))
            )
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "all()",
            "has(a) && !has(b)",
            "a == 'x' || b != \"it's\"",
            "k in {'a', 'b'} && k not in {}",
            "z contains 'q' && z starts with 'a' || z ends with 'b'",
        ] {
            let s = sel(text);
            assert_eq!(sel(&s.to_string()), s, "{text} -> {s}");
        }
    }

    #[test]
    fn display_prints_only_the_parentheses_needed() {
        for (text, shown) in [
            ("!(has(a))", "!has(a)"),
            ("!(a == 'x' && has(b))", "!(a == 'x' && has(b))"),
            ("(has(a) && has(b)) && has(c)", "has(a) && has(b) && has(c)"),
            (
                "has(a) && (has(b) && has(c))",
                "has(a) && (has(b) && has(c))",
            ),
            (
                "(has(a) || has(b)) && has(c)",
                "(has(a) || has(b)) && has(c)",
            ),
            ("has(a) || (has(b) && has(c))", "has(a) || has(b) && has(c)"),
            (
                "has(a) || (has(b) || has(c))",
                "has(a) || (has(b) || has(c))",
            ),
        ] {
            assert_eq!(sel(text).to_string(), shown, "{text}");
        }
    }

    /// Found by the selectors fuzz target (node/fuzz): every `!` printed as `!(...)`, and every
    /// `&&` and `||` in parentheses, so a selector at most MAX_DEPTH deep printed deeper than that
    /// and its text did not parse.
    #[test]
    fn display_of_deep_selectors_parses_back() {
        let chain = vec!["has(a)"; 200].join(" && ");
        for text in [
            format!("{}k== 'r0'", "!".repeat(55)),
            format!("{}has(a)", "!".repeat(MAX_DEPTH)),
            chain.clone(),
            chain.replace("&&", "||"),
            format!("{}has(a){}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH)),
        ] {
            let s = sel(&text);
            let shown = s.to_string();
            assert_eq!(Selector::parse(&shown), Ok(s), "{text}");
        }
    }

    #[test]
    fn errors_name_the_column_and_problem() {
        let cases = [
            ("has(a) &&", 10, "expected a label name"),
            ("a = 'b'", 3, "must be doubled"),
            ("a == b", 6, "expected a quoted value after '=='"),
            ("a in {'x' 'y'}", 11, "expected ',' or '}'"),
            ("a not {'x'}", 7, "expected 'in' after 'not'"),
            ("(has(a)", 8, "expected ')'"),
            ("has(a) has(b)", 8, "unexpected 'has'"),
            ("a == 'open", 6, "unterminated string"),
            ("a", 2, "expected an operator"),
            ("a == 'x' $", 10, "unexpected character '$'"),
            ("all(", 5, "expected ')' after 'all('"),
        ];
        for (text, col, msg) in cases {
            let e = Selector::parse(text).expect_err(text);
            assert_eq!(e.column, col, "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("selector {text:?}")));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}has(a){}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Selector::parse(&deep)
            .unwrap_err()
            .message
            .contains("nested"));
        let nots = format!("{}has(a)", "!".repeat(10_000));
        assert!(Selector::parse(&nots).is_err());
        assert!(Selector::parse(&format!("{}has(a){}", "(".repeat(20), ")".repeat(20))).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let pieces = [
            "(", ")", "{", "}", "'", "\"", "&&", "||", "!", "==", "!=", "in", "not", "has", "all",
            "a", ",", " ", "é", "&", "|", "=", "starts", "with", "'v'",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            let mut s = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let _ = Selector::parse(&s);
            seed = seed.wrapping_add(1);
        }
    }
}
