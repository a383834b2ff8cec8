// Tests of server/api_keys: loading keys from a file and an environment variable, and checking
// "authorization: Bearer <key>" values.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "server/api_keys.h"

namespace spqr {
namespace {

std::string WriteTempFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(ConstantTimeEqualsTest, EqualOnlyForTheSameBytes) {
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secreT", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret-and-more", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secre", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("", "secret"));
  // A repeated prefix must not pass as the longer key.
  EXPECT_FALSE(ConstantTimeEquals("ab", "abab"));
  EXPECT_FALSE(ConstantTimeEquals("", ""));  // an empty key never matches
}

TEST(ApiKeysTest, BearerSchemeIsRequiredAndCaseInsensitive) {
  const ApiKeys keys = ApiKeys::FromList({"k1", "key-two"});
  EXPECT_TRUE(keys.enabled());
  EXPECT_TRUE(keys.Accepts("Bearer k1"));
  EXPECT_TRUE(keys.Accepts("bearer key-two"));
  EXPECT_TRUE(keys.Accepts("BEARER  key-two "));
  EXPECT_FALSE(keys.Accepts("k1"));
  EXPECT_FALSE(keys.Accepts("Basic k1"));
  EXPECT_FALSE(keys.Accepts("Bearer "));
  EXPECT_FALSE(keys.Accepts("Bearer k2"));
  EXPECT_FALSE(keys.Accepts(""));
  EXPECT_EQ(keys.Find("Bearer k1"), 0);
  EXPECT_EQ(keys.Find("Bearer key-two"), 1);
  EXPECT_EQ(keys.Find("Bearer k3"), -1);
}

TEST(ApiKeysTest, NoSourcesMeansAuthOff) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Load("", "");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_FALSE(keys->enabled());
}

TEST(ApiKeysTest, FileSkipsCommentsAndBlankLinesAndEnvAddsKeys) {
  const std::string path = WriteTempFile("keys.txt", "# admin\n  alpha  \n\nbeta\n");
  setenv("SPQR_API_KEYS_TEST", " gamma, ,delta ", 1);
  absl::StatusOr<ApiKeys> keys = ApiKeys::Load(path, "SPQR_API_KEYS_TEST");
  unsetenv("SPQR_API_KEYS_TEST");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 4u);
  for (const char* key : {"alpha", "beta", "gamma", "delta"}) {
    EXPECT_TRUE(keys->Accepts(std::string("Bearer ") + key)) << key;
  }
  EXPECT_FALSE(keys->Accepts("Bearer # admin"));
}

TEST(ApiKeysTest, ErrorsNameTheSource) {
  absl::StatusOr<ApiKeys> missing = ApiKeys::Load("/nonexistent/keys.txt", "");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/keys.txt"), std::string::npos);
  const std::string empty = WriteTempFile("empty-keys.txt", "# nothing\n\n");
  absl::StatusOr<ApiKeys> no_keys = ApiKeys::Load(empty, "");
  EXPECT_EQ(no_keys.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_keys.status().message().find("holds no key"), std::string::npos);
  unsetenv("SPQR_API_KEYS_UNSET");
  absl::StatusOr<ApiKeys> unset = ApiKeys::Load("", "SPQR_API_KEYS_UNSET");
  EXPECT_EQ(unset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unset.status().message().find("SPQR_API_KEYS_UNSET"), std::string::npos);
}

}  // namespace
}  // namespace spqr
