// Preloaded into Portkey's gateway (node --import) by bench/peers.py: its start-server.js
// listens on every interface and has no option for the address, and the benchmark's
// peers must listen on 127.0.0.1 only. A listen(port) with no host gets 127.0.0.1.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
  if (typeof port === "number" && (host === undefined || typeof host === "function")) {
    return listen.call(this, port, "127.0.0.1", ...(host === undefined ? rest : [host, ...rest]));
  }
  return listen.call(this, port, host, ...rest);
};
