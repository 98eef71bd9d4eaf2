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

# The build stage repeats docker/node.Dockerfile's steps, so the two images
# share those layers in the build cache.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/cw
# Dependencies first, so source changes reuse this layer.
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/src/calimero_workflow && touch /src/src/calimero_workflow/__init__.py \
 && /opt/cw/bin/pip install --quiet /src && /opt/cw/bin/pip uninstall --quiet -y calimero-workflow
COPY src /src/src
# build/ holds the stub package of the step above; setuptools would reuse its
# files where they look newer than the real ones
RUN rm -rf /src/build /src/src/*.egg-info \
 && /opt/cw/bin/pip install --quiet --no-deps /src \
 && printf '#!/opt/cw/bin/python\nimport sys\nfrom calimero_workflow.action import main\nsys.exit(main())\n' \
      > /opt/cw/calimero-workflow-action \
 && printf '#!/opt/cw/bin/python\nimport sys\nfrom calimero_workflow.action import main\nsys.exit(main(["post"]))\n' \
      > /opt/cw/calimero-workflow-post \
 && chmod 0755 /opt/cw/calimero-workflow-action /opt/cw/calimero-workflow-post

FROM ${BASE_IMAGE}
COPY --from=build /opt/cw /opt/cw
RUN ln -s /opt/cw/calimero-workflow-action /usr/local/bin/calimero-workflow-action \
 && ln -s /opt/cw/calimero-workflow-post /usr/local/bin/calimero-workflow-post \
 && ln -s /opt/cw/bin/calimero-workflow /usr/local/bin/calimero-workflow
# Unbuffered: workflow commands on stdout must reach the runner in order with stderr.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/usr/local/bin/calimero-workflow-action"]
