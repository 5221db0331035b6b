// Portkey's server binds every interface and has no option for the address; the benchmark
// must listen on loopback only, so this preload pins every listen() to 127.0.0.1.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const cb = args.find((a) => typeof a === "function");
  if (typeof args[0] === "object" && args[0] !== null) {
    return listen.call(this, { ...args[0], host: "127.0.0.1" }, cb);
  }
  return listen.call(this, Number(args[0]), "127.0.0.1", cb);
};
