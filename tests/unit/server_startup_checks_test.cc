// Tests of server/startup_checks: TLS files (a key that does not match its certificate is named
// as such), listen failures (port in use, bad port, unknown host) and model.dir problems.
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/startup_checks.h"

namespace spqr {
namespace {

using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/spqr-startup-XXXXXX";
    path_ = mkdtemp(pattern);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string File(const std::string& name, const std::string& text) const {
    const std::string path = path_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A fresh P-256 key as PEM.
EVP_PKEY* NewKey() { return EVP_EC_gen("P-256"); }

std::string KeyPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(bio);
  return pem;
}

// A self-signed certificate of `key` as PEM.
std::string CertPem(EVP_PKEY* key) {
  X509* cert = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("test"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509_sign(cert, key, EVP_sha256());
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(size));
  BIO_free(bio);
  X509_free(cert);
  return pem;
}

TEST(TlsFilesTest, MatchingPairPassesAndAMismatchIsNamed) {
  TempDir dir;
  EVP_PKEY* key = NewKey();
  EVP_PKEY* other = NewKey();
  ASSERT_NE(key, nullptr);
  TlsSection tls;
  tls.cert_file = dir.File("server.pem", CertPem(key));
  tls.key_file = dir.File("server.key", KeyPem(key));
  EXPECT_TRUE(CheckTlsFiles(tls).ok()) << CheckTlsFiles(tls);
  tls.client_ca_file = tls.cert_file;
  EXPECT_TRUE(CheckTlsFiles(tls).ok());

  tls.key_file = dir.File("other.key", KeyPem(other));
  absl::Status s = CheckTlsFiles(tls);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("server.tls.key_file " + tls.key_file +
                                     " does not match the certificate in server.tls.cert_file " +
                                     tls.cert_file));
  EVP_PKEY_free(key);
  EVP_PKEY_free(other);
}

TEST(TlsFilesTest, UnreadableOrWrongFilesAreNamedWithTheirKey) {
  TempDir dir;
  EVP_PKEY* key = NewKey();
  const std::string cert = dir.File("server.pem", CertPem(key));
  const std::string pkey = dir.File("server.key", KeyPem(key));
  const std::string junk = dir.File("junk.pem", "not pem at all\n");
  TlsSection tls;
  tls.cert_file = cert;
  tls.key_file = dir.path() + "/missing.key";
  EXPECT_THAT(CheckTlsFiles(tls).message(), HasSubstr("server.tls.key_file"));
  EXPECT_THAT(CheckTlsFiles(tls).message(), HasSubstr("cannot open"));
  tls.key_file = cert;  // a certificate is not a key
  EXPECT_THAT(CheckTlsFiles(tls).message(), HasSubstr("server.tls.key_file"));
  EXPECT_THAT(CheckTlsFiles(tls).message(), HasSubstr("no PEM private key"));
  tls.cert_file = junk;
  tls.key_file = pkey;
  EXPECT_THAT(CheckTlsFiles(tls).message(),
              HasSubstr("server.tls.cert_file " + junk + ": no PEM certificate"));
  tls.cert_file = cert;
  tls.client_ca_file = pkey;  // a key is not a CA bundle
  EXPECT_THAT(CheckTlsFiles(tls).message(), HasSubstr("server.tls.client_ca_file"));
  // No TLS configured: nothing to check.
  EXPECT_TRUE(CheckTlsFiles(TlsSection()).ok());
  EVP_PKEY_free(key);
}

TEST(ListenDiagnosisTest, NamesTheReason) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string taken = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  EXPECT_THAT(DiagnoseListenFailure(taken), HasSubstr("cannot listen on " + taken +
                                                      " (server.listen): the address is already "
                                                      "in use"));
  close(fd);
  EXPECT_THAT(DiagnoseListenFailure("127.0.0.1:99999"), HasSubstr("not a number in [0, 65535]"));
  EXPECT_THAT(DiagnoseListenFailure("no-such-host.invalid:80"), HasSubstr("does not resolve"));
  // 192.0.2.1 (TEST-NET-1) is no address of this machine.
  EXPECT_THAT(DiagnoseListenFailure("192.0.2.1:0"), HasSubstr("not an address of this machine"));
}

TEST(ModelDirTest, MissingFileAndUnreadableAreNamed) {
  TempDir dir;
  EXPECT_TRUE(CheckModelDir(dir.path()).ok());
  EXPECT_THAT(CheckModelDir(dir.path() + "/nope").message(),
              HasSubstr("model.dir " + dir.path() + "/nope: No such file or directory"));
  const std::string file = dir.File("config.json", "{}");
  EXPECT_THAT(CheckModelDir(file).message(), HasSubstr("not a directory"));
  if (geteuid() != 0) {  // root reads any directory
    const std::string locked = dir.path() + "/locked";
    std::filesystem::create_directory(locked);
    std::filesystem::permissions(locked, std::filesystem::perms::none);
    EXPECT_THAT(CheckModelDir(locked).message(), HasSubstr("cannot be read"));
    std::filesystem::permissions(locked, std::filesystem::perms::owner_all);
  }
}

}  // namespace
}  // namespace spqr
