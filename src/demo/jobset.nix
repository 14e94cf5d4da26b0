# The jobset of `hydrant demo`: a dozen jobs that need nothing but /bin/sh and
# the host's coreutils (no nixpkgs), shaped like a small project:
#
#   toolchain ─┬─ libcore ─┬─ libnet ─┐
#              │           ├─ libui ──┼─ app ─┬─ checks
#              │           └─ cli     │       └─ release ─ (build products)
#              ├─ assets (out, dev, doc) ─┘──── manual ──┘
#              └─ broken (exit 1) ─ plugin (dependency failed)
#
# `nonce` is mixed into every derivation, so that a fresh demo state directory
# builds for real even when the host store holds a previous demo's outputs;
# with the same nonce the derivations, and so the outcome, are the same.
{ nonce ? "" }:
let
  mk = { name, script, outputs ? [ "out" ], description ? "" }:
    derivation {
      inherit name outputs;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-e" "-c" script ];
      PATH = "/usr/bin:/bin";
      demoNonce = nonce;
    } // { meta = { inherit description; }; };

  toolchain = mk {
    name = "demo-toolchain-1.0";
    description = "The shared base every other job builds with";
    script = ''
      mkdir -p $out/bin
      printf '#!/bin/sh\necho "compiled $*"\n' > $out/bin/cc
      chmod +x $out/bin/cc
      echo 1.0 > $out/version
      echo "toolchain ready"
    '';
  };

  libcore = mk {
    name = "demo-libcore-1.0";
    description = "A library everything links against";
    script = ''
      mkdir -p $out/lib
      ${toolchain}/bin/cc core.c > $out/lib/libcore.a
      sleep 1
    '';
  };

  libnet = mk {
    name = "demo-libnet-1.0";
    script = ''
      mkdir -p $out/lib
      { ${toolchain}/bin/cc net.c; cat ${libcore}/lib/libcore.a; } > $out/lib/libnet.a
      sleep 1
    '';
  };

  libui = mk {
    name = "demo-libui-1.0";
    script = ''
      mkdir -p $out/lib
      { ${toolchain}/bin/cc ui.c; cat ${libcore}/lib/libcore.a; } > $out/lib/libui.a
      sleep 1
    '';
  };

  cli = mk {
    name = "demo-cli-1.0";
    script = ''
      mkdir -p $out/bin
      { echo '#!/bin/sh'; echo 'echo demo-cli'; } > $out/bin/demo-cli
      chmod +x $out/bin/demo-cli
      ${toolchain}/bin/cc cli.c > $out/cli.o
      cat ${libcore}/lib/libcore.a >> $out/cli.o
    '';
  };

  # Several outputs: headers, documentation and the data itself.
  assets = mk {
    name = "demo-assets-1.0";
    outputs = [ "out" "dev" "doc" ];
    script = ''
      mkdir -p $out/share $dev/include $doc/share/doc
      echo "icons and strings" > $out/share/assets.dat
      echo "#define DEMO_ASSETS 1" > $dev/include/assets.h
      echo "<h1>Demo manual</h1>" > $doc/share/doc/index.html
      cat ${toolchain}/version > $out/share/toolchain-version
    '';
  };

  app = mk {
    name = "demo-app-1.0";
    description = "The application: links both libraries and the asset headers";
    script = ''
      mkdir -p $out/bin $out/share
      cat ${libnet}/lib/libnet.a ${libui}/lib/libui.a ${assets.dev}/include/assets.h > $out/share/app.o
      cp ${assets}/share/assets.dat $out/share/
      { echo '#!/bin/sh'; echo 'echo "hello from the demo app"'; } > $out/bin/demo-app
      chmod +x $out/bin/demo-app
      sleep 1
    '';
  };

  manual = mk {
    name = "demo-manual-1.0";
    script = ''
      mkdir -p $out/share/doc
      cp ${assets.doc}/share/doc/index.html $out/share/doc/manual.html
    '';
  };

  checks = mk {
    name = "demo-checks-1.0";
    script = ''
      ${app}/bin/demo-app > $out
      grep -q "hello from the demo app" $out
      echo "all checks passed"
    '';
  };

  # Hydra build products (nix-support/hydra-build-products) and a release name.
  release = mk {
    name = "demo-release-1.0";
    description = "A release tarball with its manual, as Hydra build products";
    script = ''
      mkdir -p $out/nix-support
      tar -C ${app} --owner=0 --group=0 --numeric-owner --mtime=@1 --sort=name -cf $out/demo-app-1.0.tar bin share
      cp ${manual}/share/doc/manual.html $out/manual.html
      echo "file binary-dist $out/demo-app-1.0.tar" >> $out/nix-support/hydra-build-products
      echo "doc manual $out/manual.html" >> $out/nix-support/hydra-build-products
      echo "demo-app-1.0" > $out/nix-support/hydra-release-name
    '';
  };

  broken = mk {
    name = "demo-broken-1.0";
    description = "Fails on purpose (exit 1)";
    script = ''
      echo "compiling with ${toolchain}/bin/cc"
      echo "error: this job fails on purpose" >&2
      exit 1
    '';
  };

  plugin = mk {
    name = "demo-plugin-1.0";
    description = "Needs the broken job, so it ends as dependency failed";
    script = ''
      cat ${broken} > $out
    '';
  };
in
{
  inherit toolchain libcore libnet libui cli assets app manual checks release broken plugin;
}
