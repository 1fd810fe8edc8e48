# The dask-operator image: one pure-Python wheel on a slim Python base, run as UID 1000 with a
# read-only root filesystem (see manifests/manager/deployment.yaml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY dask_operator ./dask_operator
COPY api ./api
COPY controller ./controller
# dask_operator/api and dask_operator/controller are symlinks to the two folders; the wheel holds
# real files under dask_operator/ only.
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin dask
USER 1000
EXPOSE 8080 8081
ENTRYPOINT ["dask-operator"]
CMD ["run", "--all-namespaces", "--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"]
