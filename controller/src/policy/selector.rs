//! Label selectors: which hosts a role (or a `grant request --selector`) names by their labels.
//!
//! Syntax (a subset of Kubernetes' set-based selectors): terms separated by commas, all of which
//! must hold — `key=value`, `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`. A term naming a
//! label the host does not carry is false, except `!=` and `notin`, which are true only when
//! the host carries the label with another value (fail closed: an unlabelled host is never
//! selected by a negation alone). Keys and values are `[A-Za-z0-9._/-]{1,63}`.

use std::collections::BTreeMap;
use std::fmt;

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; every term must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    terms: Vec<Term>,
}

/// The longest selector accepted (bytes).
pub const MAX_SELECTOR_BYTES: usize = 1024;

/// Whether `s` is a valid label key or value.
pub fn is_valid_label_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

fn part(s: &str, what: &str, selector: &str) -> Result<String, String> {
    let s = s.trim();
    if is_valid_label_part(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "label selector {selector:?}: {what} {s:?} is not a label {what} \
             ([A-Za-z0-9._/-], 1 to 63 characters)"
        ))
    }
}

impl Selector {
    /// Parses `env=prod,team=payments` or `env in (prod,staging)`; the error is one sentence
    /// naming the selector and what is wrong in it.
    pub fn parse(text: &str) -> Result<Selector, String> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(format!(
                "a label selector may be at most {MAX_SELECTOR_BYTES} bytes"
            ));
        }
        let mut terms = Vec::new();
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err("the label selector is empty; write e.g. env=prod,team=payments".into());
        }
        while !rest.is_empty() {
            // A term ends at the first comma outside parentheses.
            let mut depth = 0i32;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
                if depth < 0 {
                    return Err(format!("label selector {text:?}: unbalanced ')'"));
                }
            }
            let comma = end < rest.len();
            let term = rest[..end].trim();
            rest = rest.get(end + 1..).unwrap_or("").trim_start();
            terms.push(Self::term(term, text)?);
            if comma && rest.is_empty() {
                return Err(format!("label selector {text:?} ends with a comma"));
            }
        }
        Ok(Selector {
            text: text.trim().to_string(),
            terms,
        })
    }

    fn term(term: &str, selector: &str) -> Result<Term, String> {
        if term.is_empty() {
            return Err(format!("label selector {selector:?} has an empty term"));
        }
        if let Some((key, value)) = term.split_once("!=") {
            return Ok(Term::NotEquals(
                part(key, "key", selector)?,
                part(value, "value", selector)?,
            ));
        }
        if let Some((key, value)) = term.split_once('=') {
            let value = value.strip_prefix('=').unwrap_or(value);
            return Ok(Term::Equals(
                part(key, "key", selector)?,
                part(value, "value", selector)?,
            ));
        }
        let mut words = term.splitn(2, char::is_whitespace);
        let key = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("").trim_start();
        let (negated, list) = if let Some(l) = rest.strip_prefix("notin") {
            (true, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (false, l)
        } else {
            return Err(format!(
                "label selector {selector:?}: {term:?} is not key=value, key!=value, \
                 key in (a,b) or key notin (a,b)"
            ));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| {
                format!("label selector {selector:?}: the values of {term:?} go in parentheses")
            })?;
        let values = inner
            .split(',')
            .map(|v| part(v, "value", selector))
            .collect::<Result<Vec<_>, _>>()?;
        let key = part(key, "key", selector)?;
        Ok(if negated {
            Term::NotIn(key, values)
        } else {
            Term::In(key, values)
        })
    }

    /// Whether a host with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k).is_some_and(|have| have != v),
            Term::In(k, vs) => labels.get(k).is_some_and(|have| vs.contains(have)),
            Term::NotIn(k, vs) => labels.get(k).is_some_and(|have| !vs.contains(have)),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_by_every_term() {
        let prod_pay = labels(&[("env", "prod"), ("team", "payments")]);
        let staging = labels(&[("env", "staging"), ("team", "search")]);
        let none = labels(&[]);
        for (selector, host, expected) in [
            ("env=prod", &prod_pay, true),
            ("env==prod", &prod_pay, true),
            ("env=prod,team=payments", &prod_pay, true),
            ("env=prod,team=payments", &staging, false),
            ("env in (prod,staging)", &prod_pay, true),
            ("env in (prod, staging)", &staging, true),
            ("env in (prod)", &staging, false),
            ("env notin (prod)", &staging, true),
            ("env notin (prod)", &prod_pay, false),
            ("env!=prod", &staging, true),
            ("env!=prod", &prod_pay, false),
            // A negation never selects a host without the label.
            ("env!=prod", &none, false),
            ("env notin (prod)", &none, false),
            ("env=prod", &none, false),
            ("team=payments, env in (prod,staging)", &prod_pay, true),
        ] {
            let parsed = Selector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(parsed.matches(host), expected, "{selector} on {host:?}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_a_reason() {
        for (bad, expect) in [
            ("", "empty"),
            ("env", "is not key=value"),
            ("env=", "is not a label value"),
            ("=prod", "is not a label key"),
            ("env in prod", "parentheses"),
            ("env in (prod,)", "is not a label value"),
            ("env=prod,", "ends with a comma"),
            ("env=prod,,team=a", "empty term"),
            ("env=pr od", "is not a label value"),
            ("env)=x", "unbalanced"),
        ] {
            let err = Selector::parse(bad).expect_err(bad);
            assert!(err.contains(expect), "{bad:?}: {err}");
        }
        assert!(Selector::parse(&"a=b,".repeat(400)).is_err());
    }
}
