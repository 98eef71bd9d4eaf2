# The GitHub Action image (action.yml: `runs.using: docker`, `image: Dockerfile`).
#
# With no arguments it is the action: it reads INPUT_* and GITHUB_* from the
# environment the runner gives it. With arguments it is the command line:
#
#   docker build -t calimero-workflow/action:dev .
#   docker run --rm -v "$PWD:/work" -w /work calimero-workflow/action:dev run wf.yml --backend embedded
#
# No USER (the runner needs root for the workspace and file-command mounts)
# and no WORKDIR (the runner mounts the workspace and sets the working
# directory itself). The entry points are Python scripts, not shell, so no
# input value is ever read by a shell.
ARG BASE_IMAGE=python:3.11-slim

# The build stage is docker/node.Dockerfile's, instruction for instruction, so
# that when both images are built its layers are built once and shared.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/cw
# Dependencies from PyPI first, in their own layer, so a source change reuses it:
# install the project's metadata with an empty package, then drop the package.
# The readme is a stand-in, so editing README.md does not reinstall them.
COPY pyproject.toml /src/
RUN mkdir -p /src/src/calimero_workflow && touch /src/README.md /src/src/calimero_workflow/__init__.py \
 && /opt/cw/bin/pip install --quiet /src \
 && /opt/cw/bin/pip uninstall --quiet -y calimero-workflow \
 && rm -rf /src/build /src/src /src/*.egg-info
COPY README.md /src/
COPY src /src/src
# Build the wheel, install it, add `merod`, then drop the installers (about
# 25 MB, not needed at run time).
RUN /opt/cw/bin/pip wheel --quiet --no-deps --wheel-dir /wheels /src \
 && /opt/cw/bin/pip install --quiet --no-deps /wheels/calimero_workflow-*.whl \
 && printf '#!/bin/sh\nexec /opt/cw/bin/merod-embedded "$@"\n' > /opt/cw/bin/merod \
 && chmod 0755 /opt/cw/bin/merod \
 && /opt/cw/bin/python -m pip uninstall --quiet -y pip setuptools
# The action's own part: its entry points. The main one replaces the
# package's console script, to handle signals before anything else is
# imported (see the script); the post step's is a one-liner.
COPY docker/calimero-workflow-action /opt/cw/bin/calimero-workflow-action
RUN printf '#!/opt/cw/bin/python\nimport sys\nfrom calimero_workflow.action import main\nsys.exit(main(["post"]))\n' \
      > /opt/cw/bin/calimero-workflow-post \
 && chmod 0755 /opt/cw/bin/calimero-workflow-post /opt/cw/bin/calimero-workflow-action

FROM ${BASE_IMAGE}
COPY --from=build /opt/cw /opt/cw
RUN ln -s /opt/cw/bin/calimero-workflow-action /usr/local/bin/calimero-workflow-action \
 && ln -s /opt/cw/bin/calimero-workflow-post /usr/local/bin/calimero-workflow-post \
 && ln -s /opt/cw/bin/calimero-workflow /usr/local/bin/calimero-workflow
# Unbuffered: workflow commands on stdout must reach the runner in order with stderr.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/usr/local/bin/calimero-workflow-action"]
