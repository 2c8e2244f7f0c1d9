//! loggate's wire protocol: the generated tonic/prost code for `proto/loggate.proto`, nothing else.

#![forbid(unsafe_code)]
#![allow(clippy::large_enum_variant)]

tonic::include_proto!("loggate.v1");
