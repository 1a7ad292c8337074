-- Audit database schema v1 as registry/audit.py at commit 6faeed2 writes it on PostgreSQL, with three rows;
-- dumped with pg_dump 15 --inserts --no-owner --no-privileges --no-comments (psql meta-commands removed).
-- tests/test_audit.py restores it into a fresh database and opens it with the current code.
--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: restar_audit_schema; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.restar_audit_schema (
    version integer NOT NULL,
    applied_at timestamp with time zone NOT NULL
);


--
-- Name: restar_audit_schema_version_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.restar_audit_schema_version_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: restar_audit_schema_version_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.restar_audit_schema_version_seq OWNED BY public.restar_audit_schema.version;


--
-- Name: restar_promotion_audit; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.restar_promotion_audit (
    id integer NOT NULL,
    model_name character varying(256) NOT NULL,
    alias character varying(64) NOT NULL,
    version integer NOT NULL,
    previous_version integer,
    action character varying(32) NOT NULL,
    decision character varying(32) NOT NULL,
    gate_results json NOT NULL,
    actor character varying(256) NOT NULL,
    reason text NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: restar_promotion_audit_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.restar_promotion_audit_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: restar_promotion_audit_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.restar_promotion_audit_id_seq OWNED BY public.restar_promotion_audit.id;


--
-- Name: restar_promotion_lock; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.restar_promotion_lock (
    model_name character varying(256) NOT NULL,
    holder character varying(256) NOT NULL,
    acquired_at timestamp with time zone NOT NULL
);


--
-- Name: restar_audit_schema version; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.restar_audit_schema ALTER COLUMN version SET DEFAULT nextval('public.restar_audit_schema_version_seq'::regclass);


--
-- Name: restar_promotion_audit id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.restar_promotion_audit ALTER COLUMN id SET DEFAULT nextval('public.restar_promotion_audit_id_seq'::regclass);


--
-- Data for Name: restar_audit_schema; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.restar_audit_schema VALUES (1, '2026-11-29 02:56:01.822805+00');


--
-- Data for Name: restar_promotion_audit; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.restar_promotion_audit VALUES (1, 'restar', 'production', 1, NULL, 'promote', 'moved', '[{"gate": "accuracy", "passed": true, "value": 0.81, "threshold": 0.7}]', 'ci', '', '2026-11-29 02:56:01.863196+00');
INSERT INTO public.restar_promotion_audit VALUES (2, 'restar', 'production', 2, 1, 'promote', 'rejected', '[{"gate": "accuracy", "passed": false, "value": 0.62, "threshold": 0.7}]', 'ci', '', '2026-11-29 02:56:01.909743+00');
INSERT INTO public.restar_promotion_audit VALUES (3, 'restar', 'production', 2, 1, 'force', 'pending', '[]', 'alice', 'hotfix: l''été "quoted"', '2026-11-29 02:56:01.916168+00');


--
-- Data for Name: restar_promotion_lock; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Name: restar_audit_schema_version_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.restar_audit_schema_version_seq', 1, false);


--
-- Name: restar_promotion_audit_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.restar_promotion_audit_id_seq', 3, true);


--
-- Name: restar_audit_schema restar_audit_schema_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.restar_audit_schema
    ADD CONSTRAINT restar_audit_schema_pkey PRIMARY KEY (version);


--
-- Name: restar_promotion_audit restar_promotion_audit_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.restar_promotion_audit
    ADD CONSTRAINT restar_promotion_audit_pkey PRIMARY KEY (id);


--
-- Name: restar_promotion_lock restar_promotion_lock_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.restar_promotion_lock
    ADD CONSTRAINT restar_promotion_lock_pkey PRIMARY KEY (model_name);


--
-- Name: ix_restar_promotion_audit_created_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_restar_promotion_audit_created_at ON public.restar_promotion_audit USING btree (created_at);


--
-- Name: ix_restar_promotion_audit_model_name; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_restar_promotion_audit_model_name ON public.restar_promotion_audit USING btree (model_name);


--
-- PostgreSQL database dump complete
--


