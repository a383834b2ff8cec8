// Parsing spqr.v1 requests from the raw bytes of a call, so that a request gRPC's own
// deserialization would refuse gets a status that says what is wrong.
//
// Why raw bytes: on gRPC's callback API a request that does not deserialize never reaches the
// service; the call ends with UNIMPLEMENTED and an empty message, and the service cannot count it.
// SpqrServiceImpl therefore registers its methods as raw (grpc::ByteBuffer) methods and parses
// here; valid clients see the same API.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"

namespace spqr {

// Parses `bytes` into `message`. On failure: INVALID_ARGUMENT naming the problem and, where it
// is known, the field as a path in the request ("pairs.pairs[1].context: invalid UTF-8 at byte 3
// of the string"; "the message is truncated: field stopping.stop_strings[0] ..."), never quoting
// the client's bytes.
absl::Status ParseRequestBytes(absl::string_view bytes, google::protobuf::Message* message);

// ParseRequestBytes of a call's payload.
absl::Status ParseRequest(const grpc::ByteBuffer& payload, google::protobuf::Message* message);

// The wire-format bytes of `message` as a call payload.
grpc::ByteBuffer SerializeResponse(const google::protobuf::Message& message);

// Whether `text` is well-formed UTF-8 by the rules protobuf applies to proto3 string fields
// (shortest forms only, no surrogates, at most U+10FFFF). On failure `*bad_offset` is the byte
// offset of the first bad sequence.
bool IsValidUtf8(absl::string_view text, size_t* bad_offset);

}  // namespace spqr
