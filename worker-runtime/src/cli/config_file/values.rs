//! Reading one TOML value as the type a task key wants, with the attribute's value forms.

use std::time::Duration;

use toml::Value;
use worker_core::{parse_duration, Topic};

/// What is wrong with a value, without the task or the key (the caller adds them).
pub(crate) type ValueResult<T> = Result<T, String>;

/// A string.
pub(crate) fn string(value: &Value) -> ValueResult<&str> {
    value
        .as_str()
        .ok_or_else(|| format!("must be a string, got {}", value.type_str()))
}

/// A topic name in one of the accepted forms.
pub(crate) fn topic(value: &Value) -> ValueResult<Topic> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("must be a topic name string, got {}", value.type_str()))?;
    Topic::parse(text).map_err(|error| error.to_string())
}

/// A whole number of at least 1 that fits `T`.
pub(crate) fn positive<T: TryFrom<i64>>(value: &Value) -> ValueResult<T> {
    let n = integer(value, "a positive integer")?;
    if n < 1 {
        return Err(format!("must be a positive integer, got {n}"));
    }
    T::try_from(n).map_err(|_| format!("is too large: {n}"))
}

/// A whole number of at least 0 that fits `T`.
pub(crate) fn non_negative<T: TryFrom<i64>>(value: &Value) -> ValueResult<T> {
    let n = integer(value, "a non-negative integer")?;
    if n < 0 {
        return Err(format!("must be a non-negative integer, got {n}"));
    }
    T::try_from(n).map_err(|_| format!("is too large: {n}"))
}

fn integer(value: &Value, what: &str) -> ValueResult<i64> {
    value
        .as_integer()
        .ok_or_else(|| format!("must be {what}, got {}", value.type_str()))
}

/// A number, integer or float.
pub(crate) fn number(value: &Value) -> ValueResult<f64> {
    match value {
        Value::Integer(n) => Ok(*n as f64),
        Value::Float(x) => Ok(*x),
        other => Err(format!("must be a number, got {}", other.type_str())),
    }
}

/// A duration: whole seconds (`30`) or a string with a unit (`"500ms"`, `"2m"`).
pub(crate) fn duration(value: &Value) -> ValueResult<Duration> {
    match value {
        Value::Integer(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| format!("must not be negative, got {n}")),
        Value::String(text) => parse_duration(text).map_err(|error| error.to_string()),
        other => Err(format!(
            "must be whole seconds (an integer) or a duration string such as \"500ms\" or \"2m\", got {}",
            other.type_str()
        )),
    }
}

/// An array of strings.
pub(crate) fn strings(value: &Value) -> ValueResult<Vec<String>> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("must be an array of strings, got {}", value.type_str()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str().map(str::to_owned).ok_or_else(|| {
                format!(
                    "must be an array of strings, but item {i} is {}",
                    item.type_str()
                )
            })
        })
        .collect()
}

/// One of a fixed set of names.
pub(crate) fn one_of<T>(
    value: &Value,
    parse: impl Fn(&str) -> Option<T>,
    names: &[&str],
) -> ValueResult<T> {
    let text = value.as_str().ok_or_else(|| {
        format!(
            "must be one of {}, got {}",
            names.join(", "),
            value.type_str()
        )
    })?;
    parse(text).ok_or_else(|| format!("must be one of {}, got \"{text}\"", names.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_accept_the_attribute_forms() {
        assert_eq!(duration(&Value::Integer(30)), Ok(Duration::from_secs(30)));
        assert_eq!(
            duration(&Value::String("500ms".into())),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(positive::<u32>(&Value::Integer(5)), Ok(5));
        assert_eq!(non_negative::<u32>(&Value::Integer(0)), Ok(0));
        assert_eq!(number(&Value::Integer(2)), Ok(2.0));
        assert_eq!(number(&Value::Float(1.5)), Ok(1.5));
        assert_eq!(
            strings(&Value::Array(vec![Value::String("a".into())])),
            Ok(vec!["a".to_owned()])
        );
    }

    #[test]
    fn readers_say_what_they_got() {
        assert_eq!(
            positive::<u32>(&Value::String("5".into())),
            Err("must be a positive integer, got string".into())
        );
        assert_eq!(
            positive::<u32>(&Value::Integer(0)),
            Err("must be a positive integer, got 0".into())
        );
        assert_eq!(
            positive::<u32>(&Value::Integer(1 << 40)),
            Err("is too large: 1099511627776".into())
        );
        assert_eq!(
            duration(&Value::Integer(-1)),
            Err("must not be negative, got -1".into())
        );
        assert!(duration(&Value::Boolean(true))
            .unwrap_err()
            .ends_with("got boolean"));
        assert_eq!(
            strings(&Value::Array(vec![Value::Integer(1)])),
            Err("must be an array of strings, but item 0 is integer".into())
        );
    }
}
