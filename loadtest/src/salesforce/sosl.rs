//! The one SOSL form a CTI gateway sends, parsed strictly:
//! `FIND {"4930123456" OR 4930765432} IN PHONE FIELDS RETURNING Contact(Id,Name,Phone),Lead,Account(Id)`.
//!
//! Keywords and names ignore case; terms may be quoted or bare and are joined by `OR` only. Anything
//! else is refused with a message saying what was expected, so a client bug shows as a clear 400
//! instead of an empty result.

use thiserror::Error;

use super::schema::ObjectKind;

/// The longest query the sandbox accepts, in characters. Real Salesforce drops `OR` operators past
/// 4,000 characters and returns nothing past 10,000; the sandbox refuses past 4,000 outright so a
/// client that batches too many numbers notices in its tests.
pub const MAX_QUERY_CHARS: usize = 4_000;

/// A parsed phone search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoslQuery {
    /// The search terms, unquoted.
    pub terms: Vec<String>,
    /// The objects to return, in the query's order, each with its fields (canonical spelling).
    pub returning: Vec<Returning>,
}

/// One object of a `RETURNING` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returning {
    /// The object searched.
    pub object: ObjectKind,
    /// The fields returned; `Id` alone when the query names none.
    pub fields: Vec<&'static str>,
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SoslError {
    /// Longer than [`MAX_QUERY_CHARS`].
    #[error("search query is {0} characters; the sandbox accepts at most {MAX_QUERY_CHARS}")]
    TooLong(usize),
    /// Not the supported form.
    #[error("{0}")]
    Malformed(String),
    /// `RETURNING` names an object the sandbox does not have.
    #[error("sObject type '{0}' is not supported.")]
    UnknownObject(String),
    /// A field list names a field the object does not have.
    #[error("No such column '{field}' on entity '{object}'.")]
    UnknownField {
        /// The object.
        object: &'static str,
        /// The field as the query spelt it.
        field: String,
    },
}

impl SoslError {
    /// The Salesforce error code.
    pub fn error_code(&self) -> &'static str {
        match self {
            SoslError::TooLong(_) | SoslError::Malformed(_) => "MALFORMED_QUERY",
            SoslError::UnknownObject(_) => "INVALID_TYPE",
            SoslError::UnknownField { .. } => "INVALID_FIELD",
        }
    }
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.rest().chars().next()
    }

    fn eat(&mut self, symbol: char) -> bool {
        if self.peek() == Some(symbol) {
            self.at += symbol.len_utf8();
            true
        } else {
            false
        }
    }

    /// The next identifier (letters, digits, `_`), or empty.
    fn word(&mut self) -> &'a str {
        self.skip_space();
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        self.at += len;
        &rest[..len]
    }

    fn keyword(&mut self, keyword: &str) -> Result<(), SoslError> {
        let start = self.at;
        let word = self.word();
        if word.eq_ignore_ascii_case(keyword) {
            Ok(())
        } else {
            Err(malformed(format!("expected {keyword} at character {start}, found '{}'", preview(&self.text[start..]))))
        }
    }
}

fn malformed(message: String) -> SoslError {
    SoslError::Malformed(message)
}

fn preview(text: &str) -> String {
    let text = text.trim_start();
    if text.is_empty() { "end of query".to_owned() } else { text.chars().take(20).collect() }
}

/// Parses `query` and checks its objects and fields against the schema.
pub fn parse(query: &str) -> Result<SoslQuery, SoslError> {
    let length = query.chars().count();
    if length > MAX_QUERY_CHARS {
        return Err(SoslError::TooLong(length));
    }
    let mut cursor = Cursor { text: query, at: 0 };
    cursor.keyword("FIND")?;
    if !cursor.eat('{') {
        return Err(malformed("expected '{' after FIND: the sandbox takes FIND {terms} IN PHONE FIELDS".into()));
    }
    let terms = parse_terms(&mut cursor)?;
    cursor.keyword("IN")?;
    cursor.keyword("PHONE").map_err(|_| malformed("the sandbox searches only IN PHONE FIELDS".into()))?;
    cursor.keyword("FIELDS")?;
    cursor.keyword("RETURNING")?;
    let mut returning: Vec<Returning> = Vec::new();
    loop {
        let name = cursor.word();
        if name.is_empty() {
            return Err(malformed(format!("expected an object name, found '{}'", preview(cursor.rest()))));
        }
        let object = ObjectKind::from_name(name).ok_or_else(|| SoslError::UnknownObject(name.to_owned()))?;
        if returning.iter().any(|earlier| earlier.object == object) {
            return Err(malformed(format!("{} appears twice in RETURNING", object.name())));
        }
        let fields = if cursor.eat('(') { parse_fields(&mut cursor, object)? } else { vec!["Id"] };
        returning.push(Returning { object, fields });
        if !cursor.eat(',') {
            break;
        }
    }
    if cursor.peek().is_some() {
        return Err(malformed(format!("unexpected '{}' after RETURNING", preview(cursor.rest()))));
    }
    Ok(SoslQuery { terms, returning })
}

/// The terms between `{` (already eaten) and `}`: `term (OR term)*`.
fn parse_terms(cursor: &mut Cursor<'_>) -> Result<Vec<String>, SoslError> {
    let mut terms = Vec::new();
    let mut want_term = true;
    loop {
        match cursor.peek() {
            None => return Err(malformed("missing '}' after the search terms".into())),
            Some('}') => {
                cursor.at += 1;
                break;
            }
            Some('"') => {
                if !want_term {
                    return Err(malformed("search terms must be joined by OR".into()));
                }
                cursor.at += 1;
                let rest = cursor.rest();
                let end = rest.find('"').ok_or_else(|| malformed("unterminated quoted search term".into()))?;
                let term = rest[..end].trim();
                if term.is_empty() {
                    return Err(malformed("empty search term".into()));
                }
                terms.push(term.to_owned());
                cursor.at += end + 1;
                want_term = false;
            }
            Some(_) => {
                let rest = cursor.rest();
                let len = rest.find(|c: char| c.is_whitespace() || c == '}' || c == '"').unwrap_or(rest.len());
                let token = &rest[..len];
                cursor.at += len;
                if token.eq_ignore_ascii_case("OR") {
                    if want_term {
                        return Err(malformed("OR must stand between two search terms".into()));
                    }
                    want_term = true;
                } else if ["AND", "NOT", "AND NOT"].iter().any(|op| token.eq_ignore_ascii_case(op)) {
                    return Err(malformed(format!("the sandbox joins search terms with OR only, not {token}")));
                } else if want_term {
                    terms.push(token.to_owned());
                    want_term = false;
                } else {
                    return Err(malformed(format!("search terms must be joined by OR, found '{token}'")));
                }
            }
        }
    }
    if terms.is_empty() {
        return Err(malformed("no search terms between '{' and '}'".into()));
    }
    if want_term {
        return Err(malformed("OR must stand between two search terms".into()));
    }
    Ok(terms)
}

/// A field list after `(` (already eaten), through `)`.
fn parse_fields(cursor: &mut Cursor<'_>, object: ObjectKind) -> Result<Vec<&'static str>, SoslError> {
    let mut fields = Vec::new();
    loop {
        let name = cursor.word();
        if name.is_empty() {
            return Err(malformed(format!("expected a field name in {}(...)", object.name())));
        }
        let field = object
            .field(name)
            .ok_or_else(|| SoslError::UnknownField { object: object.name(), field: name.to_owned() })?;
        if !fields.contains(&field) {
            fields.push(field);
        }
        if cursor.eat(')') {
            return Ok(fields);
        }
        if !cursor.eat(',') {
            return Err(malformed(format!("expected ',' or ')' in {}(...)", object.name())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"FIND {"4930123456" OR "4930765432"} IN PHONE FIELDS RETURNING Contact(Id,Name,Phone,MobilePhone),Lead(Id,Name,Phone,MobilePhone,Company),Account(Id,Name,Phone)"#;

    #[test]
    fn parses_the_gateways_form() {
        let query = parse(FULL).unwrap();
        assert_eq!(query.terms, ["4930123456", "4930765432"]);
        assert_eq!(query.returning.len(), 3);
        assert_eq!(query.returning[0].object, ObjectKind::Contact);
        assert_eq!(query.returning[0].fields, ["Id", "Name", "Phone", "MobilePhone"]);
        assert_eq!(query.returning[1].fields, ["Id", "Name", "Phone", "MobilePhone", "Company"]);
        assert_eq!(query.returning[2].object, ObjectKind::Account);
    }

    #[test]
    fn accepts_bare_terms_any_case_spacing_and_bare_objects() {
        let query = parse("FIND {4930123456} IN PHONE FIELDS RETURNING Lead, contact(id , phone)").unwrap();
        assert_eq!(query.terms, ["4930123456"]);
        assert_eq!(query.returning[0], Returning { object: ObjectKind::Lead, fields: vec!["Id"] });
        assert_eq!(query.returning[1], Returning { object: ObjectKind::Contact, fields: vec!["Id", "Phone"] });
        let query = parse("find {\"+49 30 1234567\" OR 030-7654321} in Phone fields RETURNING Account(Name)").unwrap();
        assert_eq!(query.terms, ["+49 30 1234567", "030-7654321"]);
    }

    #[test]
    fn refuses_malformed_queries_with_a_reason() {
        for query in [
            "",
            "SELECT Id FROM Contact",
            "FIND 4930123456 IN PHONE FIELDS RETURNING Contact",
            "FIND {4930123456 IN PHONE FIELDS RETURNING Contact",
            "FIND {} IN PHONE FIELDS RETURNING Contact",
            "FIND {\"\"} IN PHONE FIELDS RETURNING Contact",
            "FIND {\"49301 } IN PHONE FIELDS RETURNING Contact",
            "FIND {4930 4931} IN PHONE FIELDS RETURNING Contact",
            "FIND {4930 OR} IN PHONE FIELDS RETURNING Contact",
            "FIND {OR 4930} IN PHONE FIELDS RETURNING Contact",
            "FIND {4930 AND 4931} IN PHONE FIELDS RETURNING Contact",
            "FIND {4930} IN ALL FIELDS RETURNING Contact",
            "FIND {4930} IN PHONE FIELDS",
            "FIND {4930} IN PHONE FIELDS RETURNING",
            "FIND {4930} IN PHONE FIELDS RETURNING Contact(",
            "FIND {4930} IN PHONE FIELDS RETURNING Contact()",
            "FIND {4930} IN PHONE FIELDS RETURNING Contact(Id Name)",
            "FIND {4930} IN PHONE FIELDS RETURNING Contact, Contact",
            "FIND {4930} IN PHONE FIELDS RETURNING Contact LIMIT 10",
        ] {
            match parse(query) {
                Err(error @ SoslError::Malformed(_)) => assert_eq!(error.error_code(), "MALFORMED_QUERY"),
                other => panic!("{query:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_objects_and_fields_have_their_own_codes() {
        let error = parse("FIND {4930} IN PHONE FIELDS RETURNING Opportunity(Id)").unwrap_err();
        assert_eq!(error, SoslError::UnknownObject("Opportunity".into()));
        assert_eq!(error.error_code(), "INVALID_TYPE");
        let error = parse("FIND {4930} IN PHONE FIELDS RETURNING Account(Id,MobilePhone)").unwrap_err();
        assert_eq!(error, SoslError::UnknownField { object: "Account", field: "MobilePhone".into() });
        assert_eq!(error.error_code(), "INVALID_FIELD");
    }

    #[test]
    fn refuses_queries_over_the_length_limit() {
        let terms = (0..400).map(|i| format!("\"49301{i:05}\"")).collect::<Vec<_>>().join(" OR ");
        let query = format!("FIND {{{terms}}} IN PHONE FIELDS RETURNING Contact(Id)");
        assert!(query.len() > MAX_QUERY_CHARS);
        let error = parse(&query).unwrap_err();
        assert_eq!(error.error_code(), "MALFORMED_QUERY");
        assert!(matches!(error, SoslError::TooLong(_)));
        let short = (0..150).map(|i| format!("\"49301{i:05}\"")).collect::<Vec<_>>().join(" OR ");
        assert_eq!(parse(&format!("FIND {{{short}}} IN PHONE FIELDS RETURNING Contact(Id)")).unwrap().terms.len(), 150);
    }
}
