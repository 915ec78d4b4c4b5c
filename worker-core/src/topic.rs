//! Topic names: Pulsar's own `persistent://tenant/ns/topic` and `non-persistent://…`, and the neutral
//! `q0|q1|q2/tenant/ns/queue` form that each backend maps to its native one.

use std::fmt;
use std::str::FromStr;

/// How a topic name was written, which also says what delivery guarantee it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicScheme {
    /// `persistent://…`: stored by the broker, at least once.
    Persistent,
    /// `non-persistent://…`: not stored, best effort.
    NonPersistent,
    /// `q0/…`: best effort (at most once).
    Q0,
    /// `q1/…`: at least once.
    Q1,
    /// `q2/…`: exactly once where the backend can, else at least once.
    Q2,
}

impl TopicScheme {
    /// Whether messages on such a topic are stored by the broker until acknowledged.
    pub fn is_durable(self) -> bool {
        !matches!(self, TopicScheme::NonPersistent | TopicScheme::Q0)
    }

    /// The quality-of-service level, 0 (best effort), 1 (at least once) or 2 (exactly once).
    pub fn qos(self) -> u8 {
        match self {
            TopicScheme::NonPersistent | TopicScheme::Q0 => 0,
            TopicScheme::Persistent | TopicScheme::Q1 => 1,
            TopicScheme::Q2 => 2,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            TopicScheme::Persistent => "persistent://",
            TopicScheme::NonPersistent => "non-persistent://",
            TopicScheme::Q0 => "q0/",
            TopicScheme::Q1 => "q1/",
            TopicScheme::Q2 => "q2/",
        }
    }
}

/// A validated topic name: a scheme, a tenant, a namespace and a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic {
    scheme: TopicScheme,
    tenant: String,
    namespace: String,
    name: String,
}

/// Why a string is not a valid topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The string starts with none of the accepted prefixes.
    #[error(
        "topic `{0}` must look like `persistent://tenant/namespace/name`, \
         `non-persistent://tenant/namespace/name` or `q0|q1|q2/tenant/namespace/name`"
    )]
    UnknownForm(String),
    /// The part after the prefix is not exactly three `/`-separated segments.
    #[error("topic `{0}` must have exactly three parts after the prefix: tenant/namespace/name")]
    WrongSegmentCount(String),
    /// A segment is empty or holds a character outside `[A-Za-z0-9._:=-]`.
    #[error("topic `{topic}` has an invalid {part} `{segment}`: use letters, digits and `._:=-`")]
    InvalidSegment {
        /// The whole topic as written.
        topic: String,
        /// Which segment: tenant, namespace or name.
        part: &'static str,
        /// The offending segment.
        segment: String,
    },
}

impl Topic {
    /// Parses one of the three accepted forms.
    pub fn parse(text: &str) -> Result<Self, TopicError> {
        const SCHEMES: [TopicScheme; 5] = [
            TopicScheme::Persistent,
            TopicScheme::NonPersistent,
            TopicScheme::Q0,
            TopicScheme::Q1,
            TopicScheme::Q2,
        ];
        let (scheme, rest) = SCHEMES
            .iter()
            .find_map(|s| text.strip_prefix(s.prefix()).map(|rest| (*s, rest)))
            .ok_or_else(|| TopicError::UnknownForm(text.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [tenant, namespace, name] = parts[..] else {
            return Err(TopicError::WrongSegmentCount(text.to_owned()));
        };
        for (part, segment) in [("tenant", tenant), ("namespace", namespace), ("name", name)] {
            let valid = !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:=-".contains(&b));
            if !valid {
                return Err(TopicError::InvalidSegment {
                    topic: text.to_owned(),
                    part,
                    segment: segment.to_owned(),
                });
            }
        }
        Ok(Topic {
            scheme,
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The scheme the topic was written in.
    pub fn scheme(&self) -> TopicScheme {
        self.scheme
    }

    /// The tenant segment.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The namespace segment.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The last segment, the topic or queue name itself.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `tenant/namespace/name`, the part every backend maps from.
    pub fn path(&self) -> String {
        self.path_within("", "")
    }

    /// [`Topic::path`] between `before` and `after`, made in one allocation: backends name their
    /// own topics and keys this way, some on every publish.
    pub fn path_within(&self, before: &str, after: &str) -> String {
        [
            before,
            &self.tenant,
            "/",
            &self.namespace,
            "/",
            &self.name,
            after,
        ]
        .concat()
    }

    /// The default dead-letter topic of this topic: the same form with `-dlq` appended to the name.
    pub fn default_dlq(&self) -> Topic {
        Topic {
            name: format!("{}-dlq", self.name),
            ..self.clone()
        }
    }

    /// Whether messages on this topic are stored until acknowledged.
    pub fn is_durable(&self) -> bool {
        self.scheme.is_durable()
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}/{}/{}",
            self.scheme.prefix(),
            self.tenant,
            self.namespace,
            self.name
        )
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::parse(s)
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Topic::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips() {
        for text in [
            "persistent://prod/ingest/raw-data",
            "non-persistent://prod/ingest/raw-data",
            "q0/t/ns/q",
            "q1/t/ns/q.v2",
            "q2/t/ns/q_x",
        ] {
            let topic = Topic::parse(text).unwrap();
            assert_eq!(topic.to_string(), text);
        }
        let topic = Topic::parse("persistent://prod/ingest/raw-data").unwrap();
        assert_eq!(topic.tenant(), "prod");
        assert_eq!(topic.namespace(), "ingest");
        assert_eq!(topic.name(), "raw-data");
        assert_eq!(topic.path(), "prod/ingest/raw-data");
        assert_eq!(topic.path_within("<", ">"), "<prod/ingest/raw-data>");
        assert_eq!(
            topic.default_dlq().to_string(),
            "persistent://prod/ingest/raw-data-dlq"
        );
    }

    #[test]
    fn durability_follows_the_scheme() {
        assert!(Topic::parse("persistent://a/b/c").unwrap().is_durable());
        assert!(Topic::parse("q1/a/b/c").unwrap().is_durable());
        assert!(!Topic::parse("q0/a/b/c").unwrap().is_durable());
        assert!(!Topic::parse("non-persistent://a/b/c").unwrap().is_durable());
        assert_eq!(Topic::parse("q2/a/b/c").unwrap().scheme().qos(), 2);
    }

    #[test]
    fn rejects_malformed_names_precisely() {
        assert!(matches!(
            Topic::parse("kafka://a/b/c"),
            Err(TopicError::UnknownForm(_))
        ));
        assert!(matches!(
            Topic::parse("q3/a/b/c"),
            Err(TopicError::UnknownForm(_))
        ));
        assert!(matches!(
            Topic::parse("q1/a/b"),
            Err(TopicError::WrongSegmentCount(_))
        ));
        assert!(matches!(
            Topic::parse("q1/a/b/c/d"),
            Err(TopicError::WrongSegmentCount(_))
        ));
        assert!(matches!(
            Topic::parse("persistent://a//c"),
            Err(TopicError::InvalidSegment {
                part: "namespace",
                ..
            })
        ));
        assert!(matches!(
            Topic::parse("q1/a/b/c d"),
            Err(TopicError::InvalidSegment { part: "name", .. })
        ));
    }
}
