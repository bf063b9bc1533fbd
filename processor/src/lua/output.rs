//! Reading what a script left behind (SPEC §4 outputs) into a [`TransformedRequest`].
//!
//! Everything is read with raw access, so no metamethod — no script code — runs after the
//! script has returned. Anything unusable is an `InvalidOutput` error that names the field.
//!
//! Headers: the input headers in their order with the values the script left in `headers`
//! (`""` or a missing entry removes one), then headers the script added to `headers`, then
//! `request.headers` on top; later sources replace earlier ones case-insensitively, so
//! `request.headers` wins (SPEC §4).

use mlua::{Table, Value};

use super::script::TransformedRequest;

#[derive(Debug)]
pub(crate) enum OutputError {
    Invalid(String),
    Lua(mlua::Error),
}

impl From<mlua::Error> for OutputError {
    fn from(error: mlua::Error) -> Self {
        Self::Lua(error)
    }
}

fn invalid<T>(message: impl Into<String>) -> Result<T, OutputError> {
    Err(OutputError::Invalid(message.into()))
}

pub(crate) fn extract(
    env: &Table,
    input_headers: &[(String, String)],
) -> Result<TransformedRequest, OutputError> {
    let request = match env.raw_get::<Value>("request")? {
        Value::Table(table) => Some(table),
        Value::Nil => None,
        other => {
            return invalid(format!(
                "request must be a table, got {}",
                other.type_name()
            ));
        }
    };

    let body = match &request {
        Some(request) => match request.raw_get::<Value>("body")? {
            Value::Nil => None,
            Value::String(body) => Some(body.as_bytes().to_vec()),
            other => {
                return invalid(format!(
                    "request.body must be a string, got {}",
                    other.type_name()
                ));
            }
        },
        None => None,
    };

    let retry_on_status = match &request {
        Some(request) => statuses(request.raw_get("retry_on_status")?)?,
        None => Vec::new(),
    };

    let script_headers = match env.raw_get::<Value>("headers")? {
        Value::Table(table) => Some(table),
        Value::Nil => None,
        other => {
            return invalid(format!(
                "headers must be a table, got {}",
                other.type_name()
            ));
        }
    };
    let request_headers = match &request {
        Some(request) => match request.raw_get::<Value>("headers")? {
            Value::Table(table) => Some(table),
            Value::Nil => None,
            other => {
                return invalid(format!(
                    "request.headers must be a table, got {}",
                    other.type_name()
                ));
            }
        },
        None => None,
    };
    let headers = merge_headers(
        input_headers,
        script_headers.as_ref(),
        request_headers.as_ref(),
    )?;

    let opt_out_default_headers = match env.raw_get::<Value>("config")? {
        Value::Table(config) => matches!(
            config.raw_get::<Value>("opt_out_default_headers")?,
            Value::Boolean(true)
        ),
        _ => false,
    };

    Ok(TransformedRequest {
        body,
        headers,
        retry_on_status,
        opt_out_default_headers,
    })
}

fn statuses(value: Value) -> Result<Vec<u16>, OutputError> {
    let table = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Table(table) => table,
        other => {
            return invalid(format!(
                "request.retry_on_status must be a list of status codes, got {}",
                other.type_name()
            ));
        }
    };
    let mut statuses = Vec::with_capacity(table.raw_len());
    for index in 1..=table.raw_len() {
        let status = match table.raw_get::<Value>(index)? {
            Value::Integer(i) => i,
            Value::Number(n) if n.fract() == 0.0 => n as i64,
            other => {
                return invalid(format!(
                    "request.retry_on_status[{index}] must be an integer, got {}",
                    other.type_name()
                ));
            }
        };
        match u16::try_from(status) {
            Ok(status) if (100..=599).contains(&status) => statuses.push(status),
            _ => {
                return invalid(format!(
                    "request.retry_on_status[{index}] = {status} is not an HTTP status"
                ));
            }
        }
    }
    Ok(statuses)
}

fn merge_headers(
    input: &[(String, String)],
    script_headers: Option<&Table>,
    request_headers: Option<&Table>,
) -> Result<Vec<(String, String)>, OutputError> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(input.len() + 4);
    if let Some(table) = script_headers {
        for (name, _) in input {
            if let Some(value) = header_value(name, table.raw_get(name.as_str())?)? {
                merged.push((name.clone(), value));
            }
        }
        let added = table_headers(table, "headers", |name| {
            input.iter().any(|(input_name, _)| input_name == name)
        })?;
        for (name, value) in added {
            set_header(&mut merged, name, value);
        }
    }
    if let Some(table) = request_headers {
        for (name, value) in table_headers(table, "request.headers", |_| false)? {
            set_header(&mut merged, name, value);
        }
    }
    Ok(merged)
}

/// The entries of a header table not excluded by `skip`, sorted by name for a stable order;
/// removals (`""`) come back as `None`.
fn table_headers(
    table: &Table,
    table_name: &str,
    skip: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Option<String>)>, OutputError> {
    let mut entries = Vec::new();
    let mut failure = None;
    table
        .for_each(|name: Value, value: Value| {
            let Value::String(name) = name else {
                failure = Some(format!(
                    "{table_name} keys must be header names, got a {}",
                    name.type_name()
                ));
                return Err(mlua::Error::runtime("stop"));
            };
            let name = match name.to_str() {
                Ok(name) => name.to_string(),
                Err(_) => {
                    failure = Some(format!("{table_name} has a header name that is not UTF-8"));
                    return Err(mlua::Error::runtime("stop"));
                }
            };
            if skip(&name) {
                return Ok(());
            }
            match header_value(&name, value) {
                Ok(value) => entries.push((name, value)),
                Err(OutputError::Invalid(message)) => {
                    failure = Some(message);
                    return Err(mlua::Error::runtime("stop"));
                }
                Err(OutputError::Lua(error)) => return Err(error),
            }
            Ok(())
        })
        .or_else(|error| {
            if failure.is_some() {
                Ok(())
            } else {
                Err(error)
            }
        })?;
    if let Some(message) = failure {
        return invalid(message);
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Replaces any header of the same name (case-insensitively), or removes it when `value` is
/// `None`.
fn set_header(headers: &mut Vec<(String, String)>, name: String, value: Option<String>) {
    headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(&name));
    if let Some(value) = value {
        headers.push((name, value));
    }
}

/// A header value as sent, `None` for a removal; validates name and value for HTTP.
fn header_value(name: &str, value: Value) -> Result<Option<String>, OutputError> {
    if !is_token(name) {
        return invalid(format!("{name:?} is not a valid HTTP header name"));
    }
    let value = match value {
        Value::Nil => return Ok(None),
        Value::String(s) => match s.to_str() {
            Ok(s) => s.to_string(),
            Err(_) => return invalid(format!("header {name} has a value that is not UTF-8")),
        },
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        other => {
            return invalid(format!(
                "header {name} must be a string, got {}",
                other.type_name()
            ));
        }
    };
    if value.is_empty() {
        return Ok(None);
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return invalid(format!(
            "header {name} has a value with a line break or NUL"
        ));
    }
    Ok(Some(value))
}

/// RFC 9110 token: the characters a header name may have.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
