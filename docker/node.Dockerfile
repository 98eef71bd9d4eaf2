# A merod-compatible node image: our embedded Calimero node behind a `merod`
# command that accepts `init` and `run` as merod does.
#
#   docker build -f docker/node.Dockerfile -t calimero-workflow/node:dev .
#   docker build -f docker/node.Dockerfile --build-arg BASE_IMAGE=calimero-workflow/base:bookworm ...
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/cw
# Dependencies first, so source changes reuse this layer.
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/src/calimero_workflow && touch /src/src/calimero_workflow/__init__.py \
 && /opt/cw/bin/pip install --quiet /src && /opt/cw/bin/pip uninstall --quiet -y calimero-workflow \
 && rm -rf /src/build /src/src /src/*.egg-info
COPY src /src/src
RUN /opt/cw/bin/pip install --quiet --no-deps /src \
 && printf '#!/bin/sh\nexec /opt/cw/bin/merod-embedded "$@"\n' > /opt/cw/merod && chmod 0755 /opt/cw/merod

FROM ${BASE_IMAGE}
COPY --from=build /opt/cw /opt/cw
RUN ln -s /opt/cw/merod /usr/local/bin/merod \
 && ln -s /opt/cw/bin/calimero-workflow /usr/local/bin/calimero-workflow
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 2528 2428
WORKDIR /app
ENTRYPOINT ["merod"]
CMD ["--help"]
