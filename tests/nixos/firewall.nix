# Two VMs: a server behind llmvisor.firewall and a node on the "internet" (the test
# network, which plays the public interface). From the internet only SSH answers,
# although llmvisor and another service listen on every address. The tailnet
# interface (tailnet0) does not exist here, so nothing reaches the service ports.
{ lib, ... }:
{
  name = "llmvisor-firewall";

  nodes.server =
    { config, pkgs, ... }:
    {
      services.openssh.enable = true;

      llmvisor.firewall = {
        enable = true;
        tailnetInterface = "tailnet0";
      };

      services.llmvisor = {
        enable = true;
        listen = [ "0.0.0.0" ];
        openFirewall = true;
        firewallInterface = "tailnet0";
        clients.tester.keyFile = "/etc/llmvisor-test/tester.key";
        models.chat = {
          kind = "command";
          command = [
            "${config.services.llmvisor.package}/bin/llmvisor-mock"
            "--port"
            "{port}"
          ];
        };
      };
      environment.etc."llmvisor-test/tester.key".text = "firewall-test-key-0123456789abcdef";
      environment.systemPackages = [ pkgs.curl ];

      # A service on every address, as a careless module would start one.
      systemd.services.stray-http = {
        wantedBy = [ "multi-user.target" ];
        script = "exec ${pkgs.python3}/bin/python3 -m http.server 9000 --bind 0.0.0.0";
      };
    };

  nodes.internet =
    { pkgs, ... }:
    {
      environment.systemPackages = [ pkgs.netcat ];
    };

  testScript = ''
    start_all()
    server.wait_for_unit("sshd.service")
    server.wait_for_unit("llmvisor.service")
    server.wait_for_unit("stray-http.service")
    for port in (22, 8080, 9000):
        server.wait_for_open_port(port)

    with subtest("the services answer on the server itself"):
        server.succeed("curl -sS -o /dev/null http://127.0.0.1:8080/health")
        server.succeed("curl -sSf -o /dev/null http://127.0.0.1:9000/")

    with subtest("from the internet only SSH answers"):
        internet.wait_for_unit("network.target")
        internet.succeed("nc -z -w 5 server 22")
        for port in (8080, 9000, 9090, 3000):
            internet.fail(f"nc -z -w 3 server {port}")

    with subtest("the service port is open on the tailnet interface alone"):
        rules = server.succeed("nft list ruleset")
        assert "tailnet0" in rules, rules
  '';
}
