//! Whole k8s-openapi objects whose times are read leniently.
//!
//! A full `Job` or `Pod` holds its times deep inside (conditions, container states, the
//! template's metadata), out of reach of a field's `deserialize_with`. [`Lenient`] decodes
//! its object through a deserializer that passes everything through unchanged but for
//! k8s-openapi's `Time` and `MicroTime`, which it reads with
//! [`crate::cluster::lenient_time::parse`]: a time in the last hours of year 9999 becomes
//! the last time jiff holds instead of failing the list, watch or request it came in.
//!
//! k8s-openapi decodes both types as a newtype struct of their own name around a string;
//! `a_job_decodes_like_the_strict_type` and `times_deep_inside_a_job_are_clamped` fail if
//! that ever changes.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::runtime::watcher::Event;
use serde::de::value::{StrDeserializer, StringDeserializer};
use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, Error as _, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};
use serde::{Deserialize, Serialize};

use crate::cluster::lenient_time;

/// A `K` decoded with its times read leniently; it encodes as `K` does.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Lenient<K>(pub K);

impl<'de, K: Deserialize<'de>> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(LenientTimes(deserializer)).map(Lenient)
    }
}

impl<K: Resource> Resource for Lenient<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        self.0.meta_mut()
    }
}

/// A watch of [`Lenient`] objects gives the objects inside to the caches.
pub fn unwrap_event<K>(event: Event<Lenient<K>>) -> Event<K> {
    match event {
        Event::Apply(o) => Event::Apply(o.0),
        Event::Delete(o) => Event::Delete(o.0),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.0),
        Event::InitDone => Event::InitDone,
    }
}

/// The names k8s-openapi's time types decode under.
const TIME_TYPES: [&str; 2] = ["Time", "MicroTime"];

/// Passes everything through to `D`, each nested value through another `LenientTimes`,
/// but reads a time type's string itself.
struct LenientTimes<D>(D);

/// A time's text as the input has it (borrowed where it can be).
struct Text;

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time")
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method($($arg,)* Wrap(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for LenientTimes<D> {
    type Error = D::Error;

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        if !TIME_TYPES.contains(&name) {
            return self.0.deserialize_newtype_struct(name, Wrap(visitor));
        }
        let text = self.0.deserialize_str(Text)?;
        // The time type parses the text itself: an in-range time goes to it as it came,
        // one out of range as the end it is clamped to.
        if text.parse::<Timestamp>().is_ok() {
            return visitor.visit_newtype_struct(StrDeserializer::<D::Error>::new(&text));
        }
        let clamped = lenient_time::parse(&text).map_err(D::Error::custom)?;
        visitor.visit_newtype_struct(StringDeserializer::<D::Error>::new(clamped.to_string()))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}

/// A visitor whose nested values are read through [`LenientTimes`].
struct Wrap<V>(V);

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: serde::de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(LenientTimes(d))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(LenientTimes(d))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Wrap(seq))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Wrap(map))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(Wrap(data))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<A> {
    type Error = A::Error;
    type Variant = Wrap<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Seed(seed))?;
        Ok((value, Wrap(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap(visitor))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Wrap(visitor))
    }
}

/// A seed whose value is read through [`LenientTimes`].
struct Seed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(LenientTimes(deserializer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::core::{ObjectList, WatchEvent};
    use serde_json::json;

    /// A Job as the apiserver sends it, with every kind of value k8s-openapi decodes.
    fn job(start: &str, completion: &str) -> serde_json::Value {
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {
                "name": "pi", "namespace": "ns", "uid": "j-1", "resourceVersion": "7",
                "creationTimestamp": "2026-11-27T04:00:00Z", "generation": 2,
                "labels": {"app": "pi"}, "annotations": {"note": "9999-12-31T23:59:59Z"},
                "finalizers": ["example.com/keep"],
                "managedFields": [{"manager": "kubectl", "operation": "Update",
                                   "apiVersion": "batch/v1", "time": "2026-11-27T04:00:00Z",
                                   "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:parallelism": {}}}}]
            },
            "spec": {
                "parallelism": 2, "completions": 5, "backoffLimit": 6, "suspend": false,
                "managedBy": "example.com/jobkeeper", "completionMode": "Indexed",
                "podFailurePolicy": {"rules": [{"action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j-1"}},
                "template": {
                    "metadata": {"creationTimestamp": null, "labels": {"app": "pi"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "pi", "image": "perl",
                                        "args": ["-e", "print 1"],
                                        "ports": [{"containerPort": 80}],
                                        "resources": {"limits": {"cpu": "500m",
                                                                 "memory": "1Gi"}},
                                        "livenessProbe": {"httpGet": {"port": "http"}}}],
                        "securityContext": {"runAsUser": 1000}
                    }
                }
            },
            "status": {
                "startTime": start, "completionTime": completion, "active": 1,
                "succeeded": 4, "failed": 1, "ready": 0, "terminating": 0,
                "completedIndexes": "0-3",
                "uncountedTerminatedPods": {"succeeded": [], "failed": ["p-1"]},
                "conditions": [{"type": "Complete", "status": "True", "reason": "Done",
                                "lastProbeTime": completion,
                                "lastTransitionTime": completion}]
            }
        })
    }

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    #[test]
    fn a_job_decodes_like_the_strict_type() {
        let text = job("2026-11-27T04:00:01Z", "2026-11-27T04:10:00.25Z").to_string();
        let strict: Job = serde_json::from_str(&text).unwrap();
        let Lenient(lenient) = serde_json::from_str::<Lenient<Job>>(&text).unwrap();
        assert_eq!(lenient, strict);
        assert_eq!(
            lenient.metadata.annotations.unwrap()["note"],
            "9999-12-31T23:59:59Z",
            "strings that are no time are left alone"
        );
        let encoded = serde_json::to_value(Lenient(strict.clone())).unwrap();
        assert_eq!(encoded, serde_json::to_value(&strict).unwrap());
    }

    #[test]
    fn times_deep_inside_a_job_are_clamped() {
        let text = job("9999-12-31T23:59:59Z", "9999-12-31T23:59:59.5Z").to_string();
        assert!(
            serde_json::from_str::<Job>(&text).is_err(),
            "the strict type fails"
        );
        let Lenient(job) = serde_json::from_str::<Lenient<Job>>(&text).unwrap();
        let status = job.status.unwrap();
        let last = Some(Time(Timestamp::MAX));
        assert_eq!(status.start_time, last);
        assert_eq!(status.completion_time, last);
        let condition = &status.conditions.unwrap()[0];
        assert_eq!(condition.last_probe_time, last);
        assert_eq!(condition.last_transition_time, last);
        assert_eq!(status.succeeded, Some(4));
        assert_eq!(
            job.metadata.creation_timestamp,
            Some(at("2026-11-27T04:00:00Z"))
        );
    }

    #[test]
    fn garbage_in_a_time_still_fails() {
        let text = job("soon", "2026-11-27T04:10:00Z").to_string();
        assert!(serde_json::from_str::<Lenient<Job>>(&text).is_err());
        let text = job("9999-12-31", "2026-11-27T04:10:00Z").to_string();
        assert!(serde_json::from_str::<Lenient<Job>>(&text).is_err());
    }

    #[test]
    fn a_pod_list_with_one_pod_of_the_last_day_decodes() {
        let pod = |name: &str, finished: &str| {
            json!({
                "metadata": {"name": name, "namespace": "ns",
                             "creationTimestamp": "2026-11-27T04:00:00Z"},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
                "status": {"phase": "Failed", "containerStatuses": [{
                    "name": "main", "image": "busybox", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 1, "startedAt": finished,
                                             "finishedAt": finished}}}]}
            })
        };
        let list = json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
            "items": [pod("a", "2026-11-27T04:01:00Z"), pod("b", "9999-12-31T23:59:59Z")]
        })
        .to_string();
        assert!(serde_json::from_str::<ObjectList<Pod>>(&list).is_err());
        let list: ObjectList<Lenient<Pod>> = serde_json::from_str(&list).unwrap();
        let finished: Vec<_> = list
            .items
            .iter()
            .map(|p| {
                let status = p.0.status.as_ref().unwrap();
                let state = status.container_statuses.as_ref().unwrap()[0].state.clone();
                state.unwrap().terminated.unwrap().finished_at.unwrap()
            })
            .collect();
        assert_eq!(finished, [at("2026-11-27T04:01:00Z"), Time(Timestamp::MAX)]);
    }

    #[test]
    fn a_watch_event_of_the_last_day_decodes() {
        let event = json!({"type": "MODIFIED",
                           "object": job("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z")})
        .to_string();
        assert!(serde_json::from_str::<WatchEvent<Job>>(&event).is_err());
        match serde_json::from_str::<WatchEvent<Lenient<Job>>>(&event).unwrap() {
            WatchEvent::Modified(Lenient(job)) => {
                assert_eq!(job.status.unwrap().start_time, Some(Time(Timestamp::MAX)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn micro_times_are_clamped_too() {
        let lease = json!({
            "metadata": {"name": "jobkeeper"},
            "spec": {"holderIdentity": "a", "renewTime": "9999-12-31T23:59:59.000001Z",
                     "acquireTime": "2026-11-27T04:00:00.000001Z"}
        })
        .to_string();
        assert!(serde_json::from_str::<Lease>(&lease).is_err());
        let Lenient(lease) = serde_json::from_str::<Lenient<Lease>>(&lease).unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.renew_time.unwrap().0, Timestamp::MAX);
        assert_eq!(
            spec.acquire_time.unwrap().0,
            "2026-11-27T04:00:00.000001Z".parse::<Timestamp>().unwrap()
        );
    }
}
