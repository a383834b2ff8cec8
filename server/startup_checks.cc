#include "server/startup_checks.h"

#include <dirent.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace spqr {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

// The whole file, or an error naming `key`.
absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(key, " ", path, ": cannot open (", std::strerror(errno), ")"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// The first certificate of a PEM text, or null.
std::unique_ptr<X509, X509Free> FirstCertificate(const std::string& pem) {
  auto bio = MemoryBio(pem);
  return std::unique_ptr<X509, X509Free>(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

// OpenSSL's reason for the last failure ("no start line"), and clears its error queue.
std::string OpenSslReason() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  const char* reason = code != 0 ? ERR_reason_error_string(code) : nullptr;
  return reason != nullptr ? reason : "unknown error";
}

}  // namespace

absl::Status CheckTlsFiles(const TlsSection& tls) {
  if (tls.cert_file.empty()) return absl::OkStatus();
  ERR_clear_error();
  absl::StatusOr<std::string> cert_pem = ReadFile(tls.cert_file, "server.tls.cert_file");
  if (!cert_pem.ok()) return cert_pem.status();
  auto cert = FirstCertificate(*cert_pem);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("server.tls.cert_file ", tls.cert_file,
                                                   ": no PEM certificate could be read (",
                                                   OpenSslReason(), ")"));
  }
  absl::StatusOr<std::string> key_pem = ReadFile(tls.key_file, "server.tls.key_file");
  if (!key_pem.ok()) return key_pem.status();
  auto key_bio = MemoryBio(*key_pem);
  // An empty passphrase callback: an encrypted key fails here instead of prompting on a terminal.
  std::unique_ptr<EVP_PKEY, PkeyFree> key(PEM_read_bio_PrivateKey(
      key_bio.get(), nullptr, [](char*, int, int, void*) { return 0; }, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("server.tls.key_file ", tls.key_file, ": no PEM private key could be read (",
                     OpenSslReason(), "; encrypted keys are not supported)"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "server.tls.key_file ", tls.key_file,
        " does not match the certificate in "
        "server.tls.cert_file ",
        tls.cert_file, ": the key is not the private key of the certificate's public key"));
  }
  if (!tls.client_ca_file.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadFile(tls.client_ca_file, "server.tls.client_ca_file");
    if (!ca_pem.ok()) return ca_pem.status();
    if (FirstCertificate(*ca_pem) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("server.tls.client_ca_file ", tls.client_ca_file,
                       ": no PEM certificate could be read (", OpenSslReason(), ")"));
    }
  }
  return absl::OkStatus();
}

std::string DiagnoseListenFailure(const std::string& address) {
  const std::string prefix = absl::StrCat("cannot listen on ", address, " (server.listen): ");
  const size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  const std::string port_text = colon == std::string::npos ? "" : address.substr(colon + 1);
  int port = -1;
  if (!absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535) {
    return absl::StrCat(prefix, "the port '", port_text, "' is not a number in [0, 65535]");
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const int resolved =
      getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &found);
  if (resolved != 0) {
    return absl::StrCat(prefix, "the host '", host, "' does not resolve (", gai_strerror(resolved),
                        ")");
  }
  std::string reason;
  for (addrinfo* ai = found; ai != nullptr && reason.empty(); ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // as gRPC does
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      const int error = errno;
      reason = error == EADDRINUSE      ? "the address is already in use (another process listens "
                                          "there)"
               : error == EACCES        ? "permission denied (ports below 1024 need privileges)"
               : error == EADDRNOTAVAIL ? "the host is not an address of this machine"
                                        : std::strerror(error);
    }
    close(fd);
  }
  freeaddrinfo(found);
  if (reason.empty()) reason = "gRPC could not bind it (see its log line above)";
  return prefix + reason;
}

absl::Status CheckModelDir(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat("model.dir ", dir, ": ", std::strerror(errno), " (the model directory)"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.dir ", dir,
                     ": not a directory (model.dir names the model directory, which holds "
                     "config.json and the weights)"));
  }
  DIR* listing = opendir(dir.c_str());
  if (listing == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("model.dir ", dir, ": cannot be read (", std::strerror(errno), ")"));
  }
  closedir(listing);
  return absl::OkStatus();
}

}  // namespace spqr
