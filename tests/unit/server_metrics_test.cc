// Tests of server/metrics: the metric table follows Prometheus naming rules, matches
// docs/metrics.md, and every metric is exported by a fresh ServerMetrics.
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"
#include "server/metrics.h"

namespace spqr {
namespace {

std::set<std::string> TableNames() {
  std::set<std::string> names;
  for (const MetricSpec& spec : MetricTable()) names.insert(std::string(spec.name));
  return names;
}

TEST(MetricTableTest, NamesFollowPrometheusConventions) {
  const std::regex name_re("^(spqr_[a-z0-9_]+|vllm:[a-z_]+)$");
  std::set<std::string> seen;
  for (const MetricSpec& spec : MetricTable()) {
    const std::string name(spec.name);
    EXPECT_TRUE(std::regex_match(name, name_re)) << name;
    EXPECT_TRUE(seen.insert(name).second) << "duplicate " << name;
    EXPECT_FALSE(spec.help.empty()) << name;
    const bool total = name.size() > 6 && name.substr(name.size() - 6) == "_total";
    EXPECT_EQ(total, spec.kind == MetricKind::kCounter)
        << name << ": counters, and only they, end in _total";
  }
}

TEST(MetricTableTest, DocsListExactlyTheTable) {
  std::ifstream in(std::string(SPQR_SOURCE_DIR) + "/docs/metrics.md");
  ASSERT_TRUE(in) << "docs/metrics.md";
  std::stringstream text;
  text << in.rdbuf();
  const std::string docs = text.str();
  // Rows of the main table: "| `name` | type | ...".
  const std::regex row("\\n\\| `([a-z0-9_:]+)` \\| (counter|gauge|histogram) \\|");
  std::set<std::string> documented;
  for (auto it = std::sregex_iterator(docs.begin(), docs.end(), row); it != std::sregex_iterator();
       ++it) {
    documented.insert((*it)[1]);
  }
  EXPECT_EQ(documented, TableNames());
}

TEST(ServerMetricsTest, EveryMetricIsExported) {
  ServerMetrics metrics(/*vllm_compatible_names=*/true);
  OutputChunk final_chunk;
  final_chunk.finished = true;
  final_chunk.finish_reason = FinishReason::kLength;
  final_chunk.usage.completion_tokens = 3;
  metrics.RecordRequestFinished(final_chunk);
  metrics.RecordRpc("Generate", "OK");
  metrics.RecordInterTokenLatency(2, 0.01);
  metrics.RecordUnauthenticated("Generate", "missing");
  std::vector<prometheus::MetricFamily> families = metrics.registry()->Collect();
  for (const prometheus::MetricFamily& f : metrics.engine_collector()->Collect()) {
    families.push_back(f);
  }
  std::set<std::string> exported;
  for (const prometheus::MetricFamily& f : families) exported.insert(f.name);
  EXPECT_EQ(exported, TableNames());
  const std::string text = prometheus::TextSerializer().Serialize(families);
  EXPECT_NE(text.find("spqr_requests_total{code=\"OK\",method=\"Generate\"} 1"), std::string::npos)
      << text;
  EXPECT_NE(text.find("spqr_request_finished_total{finished_reason=\"length\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("spqr_inter_token_latency_seconds_count 2"), std::string::npos);
  EXPECT_NE(
      text.find("spqr_unauthenticated_requests_total{method=\"Generate\",reason=\"missing\"} 1"),
      std::string::npos);
}

TEST(ServerMetricsTest, StepsAreCountedByKind) {
  ServerMetrics metrics(/*vllm_compatible_names=*/false);
  metrics.RecordStep({.seconds = 0.002, .prefill_tokens = 24, .decode_tokens = 0, .sequences = 1});
  metrics.RecordStep({.seconds = 0.0003, .prefill_tokens = 0, .decode_tokens = 3, .sequences = 3});
  metrics.RecordStep({.seconds = 0.0004, .prefill_tokens = 0, .decode_tokens = 2, .sequences = 2});
  metrics.RecordStep({.seconds = 0.004, .prefill_tokens = 10, .decode_tokens = 2, .sequences = 3});
  const std::string text = prometheus::TextSerializer().Serialize(metrics.registry()->Collect());
  for (const char* expected : {
           "spqr_engine_step_duration_seconds_count{kind=\"prefill\"} 1",
           "spqr_engine_step_duration_seconds_count{kind=\"decode\"} 2",
           "spqr_engine_step_duration_seconds_count{kind=\"mixed\"} 1",
           "spqr_engine_step_duration_seconds_sum{kind=\"mixed\"} 0.004",
           "spqr_engine_step_duration_seconds_bucket{kind=\"decode\",le=\"0.0005\"} 2",
           "spqr_engine_step_duration_seconds_bucket{kind=\"decode\",le=\"0.00025\"} 0",
           "spqr_engine_step_tokens_sum{kind=\"prefill\"} 24",
           "spqr_engine_step_tokens_sum{kind=\"decode\"} 5",
           "spqr_engine_step_tokens_sum{kind=\"mixed\"} 12",
           "spqr_engine_step_tokens_bucket{kind=\"decode\",le=\"2\"} 1",
       }) {
    EXPECT_NE(text.find(expected), std::string::npos) << expected << "\n" << text;
  }
}

TEST(ServerMetricsTest, ResidentMemoryIsThisProcesssSize) {
  // A gtest binary with its libraries resident takes more than 1 MiB and less than 16 GiB.
  const double rss = ProcessResidentMemoryBytes();
  EXPECT_GT(rss, 1 << 20);
  EXPECT_LT(rss, 16.0 * (1 << 30));
  ServerMetrics metrics(/*vllm_compatible_names=*/false);
  for (const prometheus::MetricFamily& f : metrics.engine_collector()->Collect()) {
    if (f.name == "spqr_process_resident_memory_bytes") {
      EXPECT_GT(f.metric.front().gauge.value, 1 << 20);
    }
  }
}

TEST(ServerMetricsTest, VllmNamesAreOptional) {
  ServerMetrics metrics(/*vllm_compatible_names=*/false);
  for (const prometheus::MetricFamily& f : metrics.engine_collector()->Collect()) {
    EXPECT_EQ(f.name.find("vllm:"), std::string::npos) << f.name;
  }
}

}  // namespace
}  // namespace spqr
