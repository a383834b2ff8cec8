// Start-up checks that turn a failure gRPC or the model loader would report vaguely ("cannot
// listen on ...") into a message that says what is wrong and which config key to fix.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "config/server_config.h"

namespace spqr {

// With TLS configured: the certificate chain, the private key and the client CA bundle parse,
// and the key is the private key of the certificate. Errors name the file, the config key and
// the problem ("server.tls.key_file k.pem does not match the certificate in ...").
absl::Status CheckTlsFiles(const TlsSection& tls);

// Why `address` (host:port, server.listen) cannot be listened on: a port outside [0, 65535], a
// host that does not resolve, or the bind error (address in use, permission denied, not an
// address of this machine). Called after gRPC failed to bind; returns a generic message when the
// bind succeeds here.
std::string DiagnoseListenFailure(const std::string& address);

// model.dir exists, is a directory and can be listed; errors name the key and the reason.
absl::Status CheckModelDir(const std::string& dir);

}  // namespace spqr
