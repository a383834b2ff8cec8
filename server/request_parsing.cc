#include "server/request_parsing.h"

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/stubs/logging.h"
#include "grpcpp/impl/codegen/proto_utils.h"

namespace spqr {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::io::CodedInputStream;

// Nested messages deeper than this are not walked (the request messages are 3 levels deep).
constexpr int kMaxDiagnosisDepth = 16;

// "pairs.pairs[1]" for a repeated field's occurrence, "sampling" for a singular one.
std::string FieldPath(const std::string& prefix, const FieldDescriptor* field, int occurrence) {
  std::string path = prefix.empty() ? field->name() : absl::StrCat(prefix, ".", field->name());
  if (field->is_repeated()) absl::StrAppend(&path, "[", occurrence, "]");
  return path;
}

bool IsVarintType(FieldDescriptor::Type type) {
  switch (type) {
    case FieldDescriptor::TYPE_INT32:
    case FieldDescriptor::TYPE_INT64:
    case FieldDescriptor::TYPE_UINT32:
    case FieldDescriptor::TYPE_UINT64:
    case FieldDescriptor::TYPE_SINT32:
    case FieldDescriptor::TYPE_SINT64:
    case FieldDescriptor::TYPE_BOOL:
    case FieldDescriptor::TYPE_ENUM:
      return true;
    default:
      return false;
  }
}

// Walks the wire format of a message of type `type` in `bytes` (which starts at byte `base` of the
// request) and returns the first problem found, or nullopt when the walk finds none. It follows
// protobuf's parser closely enough to name the field it would have refused.
std::optional<std::string> Diagnose(absl::string_view bytes, size_t base, const Descriptor* type,
                                    const std::string& prefix, int depth) {
  CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                      static_cast<int>(bytes.size()));
  std::map<int, int> occurrences;  // field number -> how many seen so far
  for (;;) {
    if (static_cast<size_t>(in.CurrentPosition()) == bytes.size()) return std::nullopt;
    const size_t tag_at = base + static_cast<size_t>(in.CurrentPosition());
    const uint32_t tag = in.ReadTag();
    if (tag == 0) {
      return absl::StrFormat("%sthe message is truncated or malformed at byte %d (a field tag)",
                             prefix.empty() ? "" : absl::StrCat(prefix, ": "), tag_at);
    }
    const int number = static_cast<int>(tag >> 3);
    const int wire_type = static_cast<int>(tag & 7);
    const FieldDescriptor* field = type->FindFieldByNumber(number);
    const int occurrence = occurrences[number]++;
    const std::string where = field != nullptr
                                  ? FieldPath(prefix, field, occurrence)
                                  : absl::StrCat(prefix.empty() ? "" : absl::StrCat(prefix, "."),
                                                 "<unknown field ", number, ">");
    auto truncated = [&](absl::string_view what) {
      return absl::StrFormat("%s: the message is truncated or malformed at byte %d (%s)", where,
                             base + static_cast<size_t>(in.CurrentPosition()), what);
    };
    if (number == 0) return absl::StrFormat("field number 0 at byte %d is invalid", tag_at);
    switch (wire_type) {
      case 0: {  // varint
        uint64_t value = 0;
        if (!in.ReadVarint64(&value)) return truncated("a varint value");
        break;
      }
      case 1: {  // fixed64
        uint64_t value = 0;
        if (!in.ReadLittleEndian64(&value)) return truncated("a 64-bit value");
        break;
      }
      case 5: {  // fixed32
        uint32_t value = 0;
        if (!in.ReadLittleEndian32(&value)) return truncated("a 32-bit value");
        break;
      }
      case 2: {  // length-delimited: string, bytes, message, packed repeated scalars
        uint32_t length = 0;
        if (!in.ReadVarint32(&length)) return truncated("a length");
        const size_t start = static_cast<size_t>(in.CurrentPosition());
        if (length > bytes.size() - start) {
          return absl::StrFormat(
              "%s: the message is truncated: the field declares %d bytes at byte %d but %d "
              "remain",
              where, length, base + start, bytes.size() - start);
        }
        const absl::string_view value = bytes.substr(start, length);
        in.Skip(static_cast<int>(length));
        if (field == nullptr) break;
        if (field->type() == FieldDescriptor::TYPE_STRING) {
          size_t bad = 0;
          if (!IsValidUtf8(value, &bad)) {
            return absl::StrFormat(
                "%s: invalid UTF-8 at byte %d of the string (string fields must be UTF-8; "
                "send token ids for arbitrary bytes)",
                where, bad);
          }
        } else if (field->is_packable() && IsVarintType(field->type())) {
          // Packed varints (token ids): every element must be complete.
          CodedInputStream packed(reinterpret_cast<const uint8_t*>(value.data()),
                                  static_cast<int>(value.size()));
          int element = 0;
          while (packed.CurrentPosition() < static_cast<int>(value.size())) {
            uint64_t v = 0;
            if (!packed.ReadVarint64(&v)) {
              return absl::StrFormat(
                  "%s: element %d of the packed values is truncated",
                  prefix.empty() ? field->name() : absl::StrCat(prefix, ".", field->name()),
                  element);
            }
            ++element;
          }
        } else if (field->type() == FieldDescriptor::TYPE_MESSAGE && depth < kMaxDiagnosisDepth) {
          if (std::optional<std::string> problem =
                  Diagnose(value, base + start, field->message_type(), where, depth + 1)) {
            return problem;
          }
        }
        break;
      }
      default:
        return absl::StrFormat("%s: wire type %d at byte %d is not valid here", where, wire_type,
                               tag_at);
    }
  }
}

}  // namespace

bool IsValidUtf8(absl::string_view text, size_t* bad_offset) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;  // no overlong forms
      if (c == 0xed) hi = 0x9f;  // no surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;  // no overlong forms
      if (c == 0xf4) hi = 0x8f;  // at most U+10FFFF
    } else {
      *bad_offset = i;
      return false;
    }
    if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) {
      *bad_offset = i;
      return false;
    }
    for (size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xbf) {
        *bad_offset = i;
        return false;
      }
    }
    i += len;
  }
  return true;
}

absl::Status ParseRequestBytes(absl::string_view bytes, google::protobuf::Message* message) {
  bool parsed = false;
  {
    // protobuf logs one ERROR line per refused string field; the refusal goes to the client and to
    // the request log instead.
    google::protobuf::LogSilencer silence;
    parsed = message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  }
  if (parsed) return absl::OkStatus();
  const std::string type = message->GetDescriptor()->full_name();
  std::optional<std::string> problem =
      Diagnose(bytes, 0, message->GetDescriptor(), "", /*depth=*/0);
  return absl::InvalidArgumentError(
      problem.has_value() ? absl::StrCat("the request is not a valid ", type, ": ", *problem)
                          : absl::StrCat("the request (", bytes.size(), " bytes) is not a valid ",
                                         type, " protobuf message"));
}

absl::Status ParseRequest(const grpc::ByteBuffer& payload, google::protobuf::Message* message) {
  std::vector<grpc::Slice> slices;
  if (!payload.Dump(&slices).ok()) {
    return absl::InvalidArgumentError("the request payload could not be read");
  }
  if (slices.size() == 1) {
    return ParseRequestBytes(
        absl::string_view(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size()),
        message);
  }
  std::string bytes;
  bytes.reserve(payload.Length());
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return ParseRequestBytes(bytes, message);
}

grpc::ByteBuffer SerializeResponse(const google::protobuf::Message& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  // Serializing an initialized proto3 message cannot fail.
  (void)grpc::SerializationTraits<google::protobuf::Message>::Serialize(message, &buffer,
                                                                        &own_buffer);
  return buffer;
}

}  // namespace spqr
