//! Times read without failing at the end of year 9999.
//!
//! The apiserver keeps RFC 3339 times up to 9999-12-31T23:59:59Z (Go's time formats years
//! 0 to 9999), but k8s-openapi's `Time` wraps a jiff `Timestamp`, which ends at
//! 9999-12-30T22:00:00.999999999Z (and begins at -9999-01-02T01:59:59Z). A node's clock
//! or another status writer can put a time of that last day into a pod or a Job; decoded
//! strictly, that one object fails the whole list or watch it comes in, and the pod or Job
//! watch stops for every Job. [`parse`] reads such a time as the last (or first) time a
//! `Timestamp` holds: all the planner needs to know of it is that it lies far ahead, which
//! it already treats as clock skew. Text that is no date and time with an offset at all
//! still fails, as it did: the apiserver never sends it.
//!
//! [`time`] and [`option_time`] are the field decoders (`deserialize_with`) of the pod
//! watch's wire types; [`crate::cluster::lenient::Lenient`] reads every time inside a whole
//! k8s-openapi object this way.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::fmt::temporal::Pieces;
use serde::Deserializer;
use serde::de::{Error, Visitor};

/// `text` as a timestamp; a well-formed date and time with an offset that lies past the
/// last `Timestamp` (in year 9999) is read as [`Timestamp::MAX`], one before the first (in
/// year -9999) as [`Timestamp::MIN`]. Anything else that is no timestamp is an error, the
/// same as `Timestamp`'s own.
pub fn parse(text: &str) -> Result<Timestamp, k8s_openapi::jiff::Error> {
    let error = match text.parse::<Timestamp>() {
        Ok(time) => return Ok(time),
        Err(e) => e,
    };
    // Pieces keeps the civil date and time whole, so it reads what a Timestamp cannot
    // hold. A date and time with an offset that still fails can only lie outside the
    // Timestamp's range, which it leaves within a day of either end of the civil one.
    let Ok(pieces) = Pieces::parse(text) else {
        return Err(error);
    };
    let well_formed = pieces.time().is_some()
        && pieces.offset().is_some()
        && pieces.time_zone_annotation().is_none();
    match pieces.date().year() {
        9999 if well_formed => Ok(Timestamp::MAX),
        -9999 if well_formed => Ok(Timestamp::MIN),
        _ => Err(error),
    }
}

/// A `Time` field, read with [`parse`].
pub fn time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Time, D::Error> {
    deserializer.deserialize_str(TimeVisitor)
}

/// An optional `Time` field (absent or null is `None`), read with [`parse`].
pub fn option_time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Time>, D::Error> {
    deserializer.deserialize_option(OptionTimeVisitor)
}

struct TimeVisitor;

impl Visitor<'_> for TimeVisitor {
    type Value = Time;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Time, E> {
        parse(text).map(Time).map_err(E::custom)
    }
}

struct OptionTimeVisitor;

impl<'de> Visitor<'de> for OptionTimeVisitor {
    type Value = Option<Time>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time or null")
    }

    fn visit_none<E: Error>(self) -> Result<Option<Time>, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Option<Time>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Time>, D::Error> {
        time(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn times_in_range_read_as_they_are() {
        for text in [
            "2026-11-27T04:00:00Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-30T21:59:59Z",
            "9999-12-30T22:00:00Z",
            "2026-11-27T04:00:00+02:00",
        ] {
            assert_eq!(parse(text).unwrap(), at(text), "{text}");
        }
        assert_eq!(
            parse("0001-01-01T00:00:00Z").unwrap().as_second(),
            -62_135_596_800,
            "Go's zero time"
        );
    }

    #[test]
    fn fractional_seconds_are_kept() {
        let time = parse("2026-11-27T04:00:00.123456789Z").unwrap();
        assert_eq!(time.subsec_nanosecond(), 123_456_789);
        assert_eq!(time, at("2026-11-27T04:00:00.123456789Z"));
        assert_eq!(
            parse("9999-12-30T22:00:00.5Z").unwrap().subsec_nanosecond(),
            500_000_000
        );
    }

    #[test]
    fn times_past_the_last_timestamp_read_as_the_last() {
        for text in [
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999999999Z",
            "9999-12-30T22:00:01Z",
            "9999-12-31T00:00:00Z",
            "9999-12-31T20:00:00-05:00",
            "9999-12-31T23:59:59+00:00",
        ] {
            assert!(text.parse::<Timestamp>().is_err(), "{text} is out of range");
            assert_eq!(parse(text).unwrap(), Timestamp::MAX, "{text}");
        }
    }

    #[test]
    fn times_before_the_first_timestamp_read_as_the_first() {
        let text = "-009999-01-01T00:00:00Z";
        assert!(text.parse::<Timestamp>().is_err());
        assert_eq!(parse(text).unwrap(), Timestamp::MIN);
    }

    #[test]
    fn text_that_is_no_time_still_fails() {
        for text in [
            "",
            "yesterday",
            "9999-12-31",
            "9999-12-31T23:59:59",
            "9999-13-01T00:00:00Z",
            "9999-12-32T00:00:00Z",
            "9999-12-31T24:00:01Z",
            "9999-12-31T23:59:59Z[America/New_York]",
            "2026-02-30T00:00:00Z",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[derive(Deserialize)]
    struct Fields {
        #[serde(deserialize_with = "time")]
        required: Time,
        #[serde(default, deserialize_with = "option_time")]
        optional: Option<Time>,
    }

    #[test]
    fn field_decoders_read_leniently() {
        let fields: Fields = serde_json::from_str(
            r#"{"required": "9999-12-31T23:59:59Z", "optional": "2026-11-27T04:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(fields.required, Time(Timestamp::MAX));
        assert_eq!(fields.optional, Some(Time(at("2026-11-27T04:00:00Z"))));
        let fields: Fields =
            serde_json::from_str(r#"{"required": "0001-01-01T00:00:00Z", "optional": null}"#)
                .unwrap();
        assert_eq!(fields.required, Time(at("0001-01-01T00:00:00Z")));
        assert_eq!(fields.optional, None);
        let fields: Fields =
            serde_json::from_str(r#"{"required": "2026-11-27T04:00:00Z"}"#).unwrap();
        assert_eq!(fields.optional, None);
        let garbage = serde_json::from_str::<Fields>(r#"{"required": "soon"}"#);
        assert!(garbage.is_err());
        let number = serde_json::from_str::<Fields>(r#"{"required": 5}"#);
        assert!(number.is_err());
    }
}
