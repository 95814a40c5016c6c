// java-web: the JDK's own HTTP server (com.sun.net.httpserver) on the
// listener Aeterna puts on fd 0 (stdin: socket, systemd's StandardInput=socket),
// which System.inheritedChannel() returns as a ServerSocketChannel.
//
// The JDK's HttpServer can only bind a socket of its own, so adopt() gives it
// the inherited channel in place of the unbound one HttpServer.create() made
// (the one piece of reflection here: run with
// --add-opens jdk.httpserver/sun.net.httpserver=ALL-UNNAMED).
// Java can send neither a unix datagram nor SCM_RIGHTS, so READY=1 goes
// through systemd-notify (notify_access: all) and there is no SRP.
//
// Outside Aeterna it binds 127.0.0.1:$PORT (default 8095) itself.

import com.sun.net.httpserver.HttpServer;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.reflect.Field;
import java.net.InetSocketAddress;
import java.nio.channels.Channel;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

public final class Web {
    private static final long PID = ProcessHandle.current().pid();
    private static final String GEN = System.getenv().getOrDefault("AETERNA_GENERATION", "0");

    public static void main(String[] args) throws Exception {
        Channel inherited = System.inheritedChannel();
        HttpServer server;
        if (inherited instanceof ServerSocketChannel) {
            server = HttpServer.create();
            adopt(server, (ServerSocketChannel) inherited);
        } else {
            int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8095"));
            server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 128);
        }
        server.createContext("/", exchange -> {
            byte[] body = ("hello from java pid=" + PID + " gen=" + GEN + "\n")
                    .getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("Content-Type", "text/plain");
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        ExecutorService pool = Executors.newFixedThreadPool(4);
        server.setExecutor(pool);
        server.start();
        System.err.println("java-web gen=" + GEN + ": serving (java " + Runtime.version() + ")");
        notify("--ready", "--status=serving gen=" + GEN);

        // SIGTERM (a drain): stop accepting, let the exchanges in flight end, exit.
        // JDK 17's stop(delay) waits the whole delay even when nothing is in flight
        // (fixed in 21), and a relay waits for N's drain: keep it at 1 s.
        final HttpServer s = server;
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            notify("STOPPING=1");
            s.stop(1);
            pool.shutdown();
            try {
                pool.awaitTermination(5, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }));
    }

    /** Swap the unbound channel of a fresh HttpServer for the inherited listener. */
    private static void adopt(HttpServer server, ServerSocketChannel channel) throws Exception {
        Object impl = field(server.getClass(), "server").get(server);
        Class<?> c = impl.getClass();
        ServerSocketChannel unbound = (ServerSocketChannel) field(c, "schan").get(impl);
        ((SelectionKey) field(c, "listenerKey").get(impl)).cancel();
        unbound.close();
        channel.configureBlocking(false);
        Selector selector = (Selector) field(c, "selector").get(impl);
        field(c, "listenerKey").set(impl, channel.register(selector, SelectionKey.OP_ACCEPT));
        field(c, "schan").set(impl, channel);
        field(c, "bound").setBoolean(impl, true);
    }

    private static Field field(Class<?> c, String name) throws NoSuchFieldException {
        Field f = c.getDeclaredField(name);
        f.setAccessible(true);
        return f;
    }

    /** systemd-notify waits (BARRIER=1) until the manager has read the message. */
    private static void notify(String... args) {
        if (System.getenv("NOTIFY_SOCKET") == null) {
            return;
        }
        String[] cmd = new String[args.length + 1];
        cmd[0] = "systemd-notify";
        System.arraycopy(args, 0, cmd, 1, args.length);
        try {
            new ProcessBuilder(cmd)
                    .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")))
                    .redirectOutput(ProcessBuilder.Redirect.INHERIT)
                    .redirectError(ProcessBuilder.Redirect.INHERIT)
                    .start().waitFor(10, TimeUnit.SECONDS);
        } catch (IOException e) {
            System.err.println("java-web: systemd-notify: " + e.getMessage());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
