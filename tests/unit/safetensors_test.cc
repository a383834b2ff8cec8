#include "engine/model/safetensors.h"

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/safetensors_test_util.h"

namespace spqr {
namespace {

using ::spqr::testing::BuildSafetensors;
using ::spqr::testing::BytesOf;
using ::spqr::testing::PadHeader;
using ::spqr::testing::RawSafetensors;
using ::spqr::testing::TempDir;
using ::spqr::testing::TestTensor;
using ::spqr::testing::ZeroTensor;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(DTypeTest, SizesNamesAndParsingAgree) {
  const std::vector<std::pair<DType, size_t>> expected = {
      {DType::kF32, 4}, {DType::kF16, 2}, {DType::kBF16, 2}, {DType::kU8, 1},  {DType::kI8, 1},
      {DType::kU16, 2}, {DType::kI16, 2}, {DType::kU32, 4},  {DType::kI32, 4}, {DType::kI64, 8}};
  for (const auto& [dtype, size] : expected) {
    EXPECT_EQ(DTypeSize(dtype), size) << DTypeName(dtype);
    DType parsed;
    ASSERT_TRUE(ParseDType(DTypeName(dtype), &parsed)) << DTypeName(dtype);
    EXPECT_EQ(parsed, dtype);
  }
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  DType unused;
  EXPECT_FALSE(ParseDType("bf16", &unused));  // the format's spelling is upper case
  EXPECT_FALSE(ParseDType("F8_E4M3", &unused));
  EXPECT_FALSE(ParseDType("", &unused));
}

// Opens `bytes` written as `name` in a fresh directory; returns the status of Open.
absl::Status OpenBytes(const TempDir& dir, const std::string& bytes,
                       const std::string& name = "model.safetensors") {
  return SafetensorsFile::Open(dir.Write(name, bytes)).status();
}

TEST(SafetensorsTest, ValidFileRoundTripsValuesShapesAndMetadata) {
  TempDir dir;
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
  const std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x4000};  // 1, -1, 2
  const std::vector<int64_t> i64 = {-5, 1ll << 40};
  const std::vector<uint8_t> u8 = {1, 2, 3};
  const std::string path = dir.Write(
      "w.safetensors",
      BuildSafetensors({TestTensor{"a.f32", "F32", {2, 3}, BytesOf(f32)},
                        TestTensor{"b.bf16", "BF16", {3}, BytesOf(bf16)},
                        TestTensor{"c.i64", "I64", {2}, BytesOf(i64)},
                        TestTensor{"d.u8", "U8", {3}, BytesOf(u8)},
                        ZeroTensor("e.empty", "F32", {0, 4}), ZeroTensor("f.scalar", "F32", {})},
                       {{"format", "pt"}, {"note", "test"}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), path);
  EXPECT_THAT((*file)->Names(),
              ElementsAre("a.f32", "b.bf16", "c.i64", "d.u8", "e.empty", "f.scalar"));
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->metadata().at("note"), "test");
  EXPECT_EQ((*file)->Find("missing"), nullptr);

  const TensorView* a = (*file)->Find("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->name, "a.f32");
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_THAT(a->shape, ElementsAre(2, 3));
  EXPECT_EQ(a->numel(), 6);
  EXPECT_EQ(a->rank(), 2);
  EXPECT_EQ(a->nbytes, 24u);
  EXPECT_EQ(std::vector<float>(a->as<float>(), a->as<float>() + 6), f32);

  const TensorView* b = (*file)->Find("b.bf16");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kBF16);
  EXPECT_EQ(std::vector<uint16_t>(b->as<uint16_t>(), b->as<uint16_t>() + 3), bf16);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data) % 2, 0u);

  const TensorView* c = (*file)->Find("c.i64");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(std::vector<int64_t>(c->as<int64_t>(), c->as<int64_t>() + 2), i64);
  const TensorView* d = (*file)->Find("d.u8");
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(std::vector<uint8_t>(d->as<uint8_t>(), d->as<uint8_t>() + 3), u8);

  const TensorView* empty = (*file)->Find("e.empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->nbytes, 0u);
  const TensorView* scalar = (*file)->Find("f.scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_EQ(scalar->rank(), 0);
  EXPECT_EQ(scalar->numel(), 1);
  EXPECT_EQ(scalar->nbytes, 4u);

  // The whole file is mapped, header included.
  EXPECT_EQ(std::string(static_cast<const char*>((*file)->mapped_data()) + 8, 1), "{");
}

TEST(SafetensorsTest, EmptyHeaderObjectIsAValidEmptyFile) {
  TempDir dir;
  auto file = SafetensorsFile::Open(dir.Write("e.safetensors", RawSafetensors("{}", "")));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->Names().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsTest, MissingFileIsNotFoundNamingThePath) {
  TempDir dir;
  auto file = SafetensorsFile::Open(dir.path() + "/nope.safetensors");
  EXPECT_TRUE(absl::IsNotFound(file.status())) << file.status();
  EXPECT_THAT(std::string(file.status().message()), HasSubstr("nope.safetensors"));
}

TEST(SafetensorsTest, FileShorterThanLengthPrefixIsDataLoss) {
  TempDir dir;
  for (const std::string& bytes : {std::string(), std::string("\x10\0\0", 3)}) {
    const absl::Status status = OpenBytes(dir, bytes, "short.safetensors");
    EXPECT_TRUE(absl::IsDataLoss(status)) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("short.safetensors"));
    EXPECT_THAT(std::string(status.message()), HasSubstr("too short"));
  }
}

TEST(SafetensorsTest, HeaderLengthPastEndOfFileIsDataLoss) {
  TempDir dir;
  const absl::Status status =
      OpenBytes(dir, RawSafetensors("{}", "", /*header_len=*/1000), "trunc.safetensors");
  EXPECT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("trunc.safetensors"));
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("header length 1000 runs past the end of the file"));
}

TEST(SafetensorsTest, AbsurdHeaderLengthIsRejectedBeforeReading) {
  TempDir dir;
  const absl::Status status = OpenBytes(dir, RawSafetensors("{}", "", 1ll << 40));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("exceeds the 100 MB limit"));
}

TEST(SafetensorsTest, InvalidJsonAndNonObjectHeadersAreRejected) {
  TempDir dir;
  absl::Status status = OpenBytes(dir, RawSafetensors("{\"a\": ", ""));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("model.safetensors: header is not valid JSON"));

  status = OpenBytes(dir, RawSafetensors("[1, 2]", ""));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("header must be a JSON object, found array"));

  status = OpenBytes(dir, RawSafetensors("{\"t\": 3}", ""));
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("tensor 't': header entry must be an object"));
}

TEST(SafetensorsTest, EntriesWithoutRequiredFieldsNameTheTensorAndField) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", "missing 'dtype'"},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", "missing 'shape'"},
      {R"({"w": {"dtype": "F32", "shape": [2]}})", "missing 'data_offsets'"},
      {R"({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}})", "'dtype' must be a string"},
      {R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})",
       "'shape' must be an array"},
      {R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})",
       "shape [2.5] has a non-integer dimension"},
  };
  for (const auto& [header, problem] : cases) {
    const absl::Status status =
        OpenBytes(dir, RawSafetensors(PadHeader(header), std::string(8, 0)));
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << header << ": " << status;
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("model.safetensors: tensor 'w': " + problem))
        << header;
  }
}

TEST(SafetensorsTest, UnknownDtypeIsNamed) {
  TempDir dir;
  const absl::Status status = OpenBytes(
      dir,
      RawSafetensors(PadHeader(R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}})"),
                     std::string(8, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor 'w': unknown dtype 'Q4'"));
}

TEST(SafetensorsTest, NegativeAndOverflowingDimensionsAreRejected) {
  TempDir dir;
  absl::Status status = OpenBytes(
      dir, RawSafetensors(
               PadHeader(R"({"w": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}})"),
               std::string(8, 0)));
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor 'w': shape [2,-1] has a negative"));

  status = OpenBytes(dir, RawSafetensors(PadHeader(R"({"w": {"dtype": "F32", "shape": )"
                                                   R"([4294967296, 4294967296], )"
                                                   R"("data_offsets": [0, 8]}})"),
                                         std::string(8, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("is too large"));
}

TEST(SafetensorsTest, ByteRangeMustMatchShapeTimesDtypeSize) {
  TempDir dir;
  const std::string header =
      PadHeader(R"({"model.layers.0.mlp.up_proj.weight": )"
                R"({"dtype": "BF16", "shape": [8, 8], "data_offsets": [0, 100]}})");
  const absl::Status status = OpenBytes(dir, RawSafetensors(header, std::string(128, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_EQ(status.message(), dir.path() +
                                  "/model.safetensors: tensor 'model.layers.0.mlp.up_proj.weight': "
                                  "data_offsets [0, 100) hold 100 bytes but shape [8, 8] of BF16 "
                                  "needs 128");
}

TEST(SafetensorsTest, MalformedDataOffsetsAreRejected) {
  TempDir dir;
  for (const char* offsets : {"[0]", "[0, 8, 9]", "[-8, 0]", "\"0-8\"", "[8, 0]"}) {
    const absl::Status status = OpenBytes(
        dir, RawSafetensors(
                 PadHeader(std::string(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": )") +
                           offsets + "}}"),
                 std::string(16, 0)));
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << offsets << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("model.safetensors: tensor 'w': "))
        << offsets;
    EXPECT_THAT(std::string(status.message()), HasSubstr("data_offsets")) << offsets;
  }
}

TEST(SafetensorsTest, RangesOutsideTheDataAreaAreRejected) {
  TempDir dir;
  // 8 bytes of data, tensor claims bytes [8, 16).
  const absl::Status status = OpenBytes(
      dir,
      RawSafetensors(PadHeader(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})"),
                     std::string(8, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("tensor 'w': data_offsets [8, 16) run past the end of the data area "
                        "(8 bytes)"));
}

TEST(SafetensorsTest, OverlappingRangesNameBothTensors) {
  TempDir dir;
  const absl::Status status = OpenBytes(
      dir,
      RawSafetensors(PadHeader(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                               R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})"),
                     std::string(16, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("tensor 'b': data_offsets [8, 16) overlap those of "
                        "tensor 'a' [0, 16)"));
}

TEST(SafetensorsTest, DuplicateTensorNamesAreRejected) {
  TempDir dir;
  const absl::Status status = OpenBytes(
      dir,
      RawSafetensors(PadHeader(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                               R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})"),
                     std::string(8, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("names tensor 'a' more than once"));
}

TEST(SafetensorsTest, MetadataMustBeAStringMap) {
  TempDir dir;
  absl::Status status =
      OpenBytes(dir, RawSafetensors(R"({"__metadata__": {"format": "pt", "step": 5}})", ""));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("'__metadata__' entry 'step' must be a string"));

  status = OpenBytes(dir, RawSafetensors(R"({"__metadata__": ["pt"]})", ""));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("'__metadata__' must be an object of strings"));
}

TEST(SafetensorsTest, MisalignedSixteenBitDataIsRejectedWithAClearMessage) {
  TempDir dir;
  // Header of odd length (not padded) puts the BF16 data at an odd file offset.
  std::string header = R"({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}})";
  if ((8 + header.size()) % 2 == 0) header += " ";
  const absl::Status status = OpenBytes(dir, RawSafetensors(header, std::string(4, 0)));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("tensor 'w': data starts at file offset"));
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("not a multiple of the 2-byte BF16 element size"));

  // Byte-sized data needs no alignment.
  std::string u8_header = R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})";
  if ((8 + u8_header.size()) % 2 == 0) u8_header += " ";
  EXPECT_TRUE(OpenBytes(dir, RawSafetensors(u8_header, std::string(4, 0))).ok());
}

// Random corruptions of a valid file (byte flips, truncation, digit edits in the header) must
// come back as errors or as views that lie inside the mapping; under ASan any read outside the
// file fails the test. A deterministic, fast cousin of tests/fuzz/safetensors_fuzz.cc.
TEST(SafetensorsTest, RandomCorruptionsAreRejectedOrStayInBounds) {
  TempDir dir;
  const std::string valid = BuildSafetensors(
      {TestTensor{"a", "F32", {2, 3}, std::string(24, 1)}, ZeroTensor("b", "BF16", {5}),
       ZeroTensor("c", "U8", {3}), ZeroTensor("d", "I64", {1})},
      {{"format", "pt"}});
  std::mt19937 rng(1234);
  int opened = 0;
  for (int iteration = 0; iteration < 1500; ++iteration) {
    std::string bytes = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 4) {
        case 0:  // random byte
          bytes[at] = static_cast<char>(rng());
          break;
        case 1:  // a digit in the header, which moves offsets and shapes
          bytes[at] = static_cast<char>('0' + rng() % 10);
          break;
        case 2:  // truncation
          bytes.resize(at);
          break;
        default:  // the header length prefix
          bytes[rng() % 8] = static_cast<char>(rng());
          break;
      }
      if (bytes.empty()) break;
    }
    // A fresh file each time: rewriting one in place makes ext4 flush it on every truncation.
    const std::string path = dir.Write("fuzz" + std::to_string(iteration), bytes);
    auto file = SafetensorsFile::Open(path);
    std::remove(path.c_str());
    if (!file.ok()) {
      EXPECT_FALSE(file.status().message().empty());
      continue;
    }
    ++opened;
    const auto* begin = static_cast<const char*>((*file)->mapped_data());
    const auto* end = begin + (*file)->mapped_size();
    for (const std::string& name : (*file)->Names()) {
      const TensorView* view = (*file)->Find(name);
      ASSERT_NE(view, nullptr);
      const auto* data = static_cast<const char*>(view->data);
      ASSERT_GE(data, begin) << name;
      ASSERT_LE(data + view->nbytes, end) << name;
      EXPECT_EQ(view->nbytes, static_cast<size_t>(view->numel()) * DTypeSize(view->dtype));
    }
  }
  // Some corruptions (a changed value byte, a changed metadata letter) leave a valid file.
  EXPECT_GT(opened, 0);
}

TEST(CheckpointTest, SingleFileCheckpoint) {
  TempDir dir;
  dir.Write("model.safetensors",
            BuildSafetensors({ZeroTensor("x", "F32", {2}), ZeroTensor("y", "BF16", {3})}));
  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->dir(), dir.path());
  EXPECT_EQ((*checkpoint)->files().size(), 1u);
  EXPECT_THAT((*checkpoint)->Names(), ElementsAre("x", "y"));
  ASSERT_NE((*checkpoint)->Find("y"), nullptr);
  EXPECT_THAT((*checkpoint)->Find("y")->shape, ElementsAre(3));
  auto required = (*checkpoint)->Require("x");
  ASSERT_TRUE(required.ok());
  EXPECT_EQ((*required)->name, "x");

  auto missing = (*checkpoint)->Require("z");
  EXPECT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_EQ(missing.status().message(), "tensor 'z' not found in checkpoint " + dir.path());
}

TEST(CheckpointTest, DirectoryWithoutWeightsIsNotFoundNamingTheDirectory) {
  TempDir dir;
  auto checkpoint = Checkpoint::Open(dir.path());
  EXPECT_TRUE(absl::IsNotFound(checkpoint.status())) << checkpoint.status();
  EXPECT_THAT(std::string(checkpoint.status().message()), HasSubstr(dir.path()));
  EXPECT_THAT(std::string(checkpoint.status().message()),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
}

TEST(CheckpointTest, CorruptSingleFileErrorNamesTheFile) {
  TempDir dir;
  dir.Write("model.safetensors", "garbage");
  auto checkpoint = Checkpoint::Open(dir.path());
  EXPECT_FALSE(checkpoint.ok());
  EXPECT_THAT(std::string(checkpoint.status().message()),
              HasSubstr(dir.path() + "/model.safetensors"));
}

// Two shards with an index naming every tensor.
void WriteShardedCheckpoint(const TempDir& dir) {
  dir.Write("model-00001-of-00002.safetensors",
            BuildSafetensors({ZeroTensor("a", "F32", {2}), ZeroTensor("b", "F32", {3})}));
  dir.Write("model-00002-of-00002.safetensors",
            BuildSafetensors({TestTensor{"c", "F32", {1}, BytesOf(std::vector<float>{4.5f})}}));
}

TEST(CheckpointTest, ShardedCheckpointOpensEachShardOnce) {
  TempDir dir;
  WriteShardedCheckpoint(dir);
  dir.Write("model.safetensors.index.json", R"({
    "metadata": {"total_size": 24},
    "weight_map": {"a": "model-00001-of-00002.safetensors",
                   "b": "model-00001-of-00002.safetensors",
                   "c": "model-00002-of-00002.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->files().size(), 2u);
  EXPECT_THAT((*checkpoint)->Names(), ElementsAre("a", "b", "c"));
  const TensorView* c = (*checkpoint)->Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->as<float>()[0], 4.5f);
}

TEST(CheckpointTest, IndexNamingAMissingShardIsNotFound) {
  TempDir dir;
  WriteShardedCheckpoint(dir);
  dir.Write("model.safetensors.index.json",
            R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                               "d": "model-00003-of-00003.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir.path());
  EXPECT_TRUE(absl::IsNotFound(checkpoint.status())) << checkpoint.status();
  EXPECT_THAT(std::string(checkpoint.status().message()),
              HasSubstr("shard model-00003-of-00003.safetensors named by"));
  EXPECT_THAT(std::string(checkpoint.status().message()), HasSubstr("(for tensor 'd') is missing"));
}

TEST(CheckpointTest, TensorListedInIndexButAbsentFromItsShard) {
  TempDir dir;
  WriteShardedCheckpoint(dir);
  dir.Write("model.safetensors.index.json",
            R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                               "c": "model-00001-of-00002.safetensors",
                               "x": "model-00002-of-00002.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir.path());
  EXPECT_TRUE(absl::IsInvalidArgument(checkpoint.status())) << checkpoint.status();
  EXPECT_THAT(std::string(checkpoint.status().message()), HasSubstr("tensor 'c' is listed in"));
  EXPECT_THAT(std::string(checkpoint.status().message()),
              HasSubstr("model-00001-of-00002.safetensors but that shard does not contain it"));
}

TEST(CheckpointTest, TensorInTwoShardsIsAmbiguous) {
  TempDir dir;
  dir.Write("s1.safetensors", BuildSafetensors({ZeroTensor("a", "F32", {2})}));
  dir.Write("s2.safetensors",
            BuildSafetensors({ZeroTensor("a", "F32", {2}), ZeroTensor("b", "F32", {1})}));
  dir.Write("model.safetensors.index.json",
            R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir.path());
  EXPECT_TRUE(absl::IsInvalidArgument(checkpoint.status())) << checkpoint.status();
  EXPECT_THAT(std::string(checkpoint.status().message()),
              HasSubstr("tensor 'a' is present in both"));
}

TEST(CheckpointTest, MalformedIndexFilesAreRejected) {
  TempDir dir;
  WriteShardedCheckpoint(dir);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "not valid JSON"},
      {R"({"metadata": {}})", "must be an object with a \"weight_map\" object"},
      {R"({"weight_map": {}})", "\"weight_map\" is empty"},
      {R"({"weight_map": {"a": 1}})", "weight_map entry 'a' must name a shard file"},
      {R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})",
       "which is not a plain file name"},
  };
  for (const auto& [index, problem] : cases) {
    dir.Write("model.safetensors.index.json", index);
    auto checkpoint = Checkpoint::Open(dir.path());
    EXPECT_TRUE(absl::IsInvalidArgument(checkpoint.status()))
        << index << ": " << checkpoint.status();
    EXPECT_THAT(std::string(checkpoint.status().message()),
                HasSubstr("model.safetensors.index.json"));
    EXPECT_THAT(std::string(checkpoint.status().message()), HasSubstr(problem)) << index;
  }
}

TEST(CheckpointTest, BrokenShardErrorNamesTheShard) {
  TempDir dir;
  dir.Write("s1.safetensors", RawSafetensors("{", ""));
  dir.Write("model.safetensors.index.json", R"({"weight_map": {"a": "s1.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir.path());
  EXPECT_TRUE(absl::IsInvalidArgument(checkpoint.status()));
  EXPECT_THAT(std::string(checkpoint.status().message()),
              HasSubstr("s1.safetensors: header is not valid JSON"));
}

TEST(CheckpointTest, SingleFileWinsOverIndex) {
  TempDir dir;
  dir.Write("model.safetensors", BuildSafetensors({ZeroTensor("single", "F32", {1})}));
  dir.Write("model.safetensors.index.json", R"({"weight_map": {"a": "missing.safetensors"}})");
  auto checkpoint = Checkpoint::Open(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_THAT((*checkpoint)->Names(), ElementsAre("single"));
}

}  // namespace
}  // namespace spqr
